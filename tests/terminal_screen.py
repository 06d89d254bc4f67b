"""What a terminal shows for the text sent to it, for tests of progress bars beside other lines."""

from __future__ import annotations


def terminal_screen(sent: str) -> list[str]:
    """The lines on screen: a carriage return goes back to the line's start, later characters
    overwrite earlier ones, a line feed begins the next line (trailing blanks dropped)."""
    lines: list[list[str]] = [[]]
    column = 0
    for char in sent:
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append([])
            column = 0
        else:
            line = lines[-1]
            line.extend(" " * (column + 1 - len(line)))
            line[column] = char
            column += 1
    return ["".join(line).rstrip() for line in lines]
