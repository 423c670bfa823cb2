"""Bilingual (Korean, English) words the synthetic scenes draw from.

Every entry is a pair (Korean, English) so one scene can be written in either language with the
same meaning; answers stay one or two words so a tiny model can learn them.
"""

COLORS: tuple[tuple[str, str, tuple[int, int, int]], ...] = (
    ("빨간색", "red", (220, 30, 30)),
    ("초록색", "green", (30, 150, 60)),
    ("파란색", "blue", (30, 70, 220)),
    ("노란색", "yellow", (235, 195, 0)),
    ("보라색", "purple", (140, 60, 180)),
    ("검은색", "black", (20, 20, 20)),
)
"""(Korean name, English name, RGB). Far apart in RGB so a pixel read names one colour."""

SHAPES: tuple[tuple[str, str], ...] = (("원", "circle"), ("사각형", "square"), ("삼각형", "triangle"))

FRUITS: tuple[tuple[str, str], ...] = (
    ("사과", "apple"),
    ("바나나", "banana"),
    ("포도", "grape"),
    ("딸기", "strawberry"),
    ("복숭아", "peach"),
    ("수박", "melon"),
    ("레몬", "lemon"),
    ("배", "pear"),
)

MONTHS: tuple[tuple[str, str], ...] = tuple(
    (f"{m}월", en) for m, en in zip(range(1, 7), ["Jan", "Feb", "Mar", "Apr", "May", "Jun"])
)

CITIES: tuple[tuple[str, str], ...] = (
    ("서울", "Seoul"),
    ("부산", "Busan"),
    ("대구", "Daegu"),
    ("인천", "Incheon"),
    ("광주", "Gwangju"),
    ("대전", "Daejeon"),
)

WORDS_KO: tuple[str, ...] = (
    "안녕하세요", "감사합니다", "학교", "도서관", "병원", "지하철", "커피", "출구", "입구", "주차장",
    "우체국", "은행", "시장", "공원", "식당", "편의점", "약국", "영화관", "화장실", "정류장",
    "사랑", "행복", "바다", "하늘", "나무", "고양이", "강아지", "한국어", "컴퓨터", "기차",
)  # fmt: skip

WORDS_EN: tuple[str, ...] = (
    "hello", "thanks", "school", "library", "hospital", "subway", "coffee", "exit", "entrance", "parking",
    "post", "bank", "market", "park", "restaurant", "store", "pharmacy", "cinema", "toilet", "station",
    "love", "happy", "ocean", "sky", "tree", "cat", "dog", "english", "computer", "train",
)  # fmt: skip

PEOPLE: tuple[tuple[str, str], ...] = (
    ("김민수", "Kim Minsu"),
    ("이지은", "Lee Jieun"),
    ("박서준", "Park Seojun"),
    ("최유진", "Choi Yujin"),
    ("정하늘", "Jung Haneul"),
)

DOC_TITLES: tuple[tuple[str, str], ...] = (
    ("영수증", "Receipt"),
    ("공지", "Notice"),
    ("초대장", "Invitation"),
)

COUNT_WORDS_KO = ("하나", "둘", "셋", "넷", "다섯", "여섯", "일곱")
COUNT_WORDS_EN = ("one", "two", "three", "four", "five", "six", "seven")


def all_korean_strings() -> list[str]:
    """Every Korean string a scene can draw, for glyph-coverage checks of the font."""
    out: list[str] = []
    for table in (COLORS, SHAPES, FRUITS, MONTHS, CITIES, PEOPLE, DOC_TITLES):
        out.extend(row[0] for row in table)
    out.extend(WORDS_KO)
    out.extend(COUNT_WORDS_KO)
    out.extend(
        [
            "가격",
            "수량",
            "이름",
            "날짜",
            "합계",
            "기온",
            "인구",
            "항목",
            "판매량",
            "월별 방문자",
            "과일 판매량",
        ]
    )
    return out
