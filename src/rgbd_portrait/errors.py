"""The one exception type for bad user input; the CLI prints it as a single line."""


class UserInputError(ValueError):
    """Input that the user can fix: a bad file, argument or configuration.

    The message is one line and names the offending file or argument.
    """
