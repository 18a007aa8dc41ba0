"""See DESIGN.md: monitor part of tiertop."""
