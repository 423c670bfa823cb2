"""The five studies of `shared/seeds/`, one file each."""
