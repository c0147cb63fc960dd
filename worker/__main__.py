"""``python -I -m cordon.worker``: the sandboxed worker process the host starts."""

from ._launch import main

if __name__ == "__main__":
    main()
