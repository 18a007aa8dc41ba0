"""See DESIGN.md: runtime part of tiertop."""
