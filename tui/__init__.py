"""See DESIGN.md: tui part of tiertop."""
