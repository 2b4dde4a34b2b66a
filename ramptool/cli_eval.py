"""``ramptool eval``: evaluation subcommands (issue 6 replaces these)."""

import typer

from ramptool.errors import RamptoolError

eval_app = typer.Typer(no_args_is_help=True)


@eval_app.command()
def union():
    """Union accuracy under AutoAttack (not implemented yet)."""
    raise RamptoolError("ramptool eval union is not implemented yet")


@eval_app.command()
def corruptions():
    """Common-corruption accuracy (not implemented yet)."""
    raise RamptoolError("ramptool eval corruptions is not implemented yet")
