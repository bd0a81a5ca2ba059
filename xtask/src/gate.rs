//! Gates: checks a color must pass before it gets traffic.
