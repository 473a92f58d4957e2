"""Pure, standard-library-only logic shared by the KEMI script and pushd.

Nothing here does I/O: Kamailio's embedded Python (Debian's python3) imports it
without a virtualenv.
"""
