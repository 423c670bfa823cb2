from tbi_evalbench.cli import main_entry

# Guarded so that importing the module (e.g. pkgutil.walk_packages) does not run the CLI.
if __name__ == "__main__":
    main_entry()
