"""The command line's subcommands: each parses its options, calls one library function and prints.

May import anything below it; nothing imports it but ``cli``.
"""
