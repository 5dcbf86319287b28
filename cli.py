import click


@click.group()
def cli():
    """mae-affect."""


def main():
    cli()


if __name__ == "__main__":
    main()
