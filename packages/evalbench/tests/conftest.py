import pytest

from tbi_evalbench.text import Tokenizer


@pytest.fixture(scope="session")
def ko_tokenizer():
    # kiwipiepy takes seconds to load its model: one analyser for the whole session.
    return Tokenizer("ko-morph")
