"""See DESIGN.md: scenarios part of tiertop."""
