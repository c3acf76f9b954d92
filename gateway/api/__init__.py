"""One router per resource; each handler fills the request's AccessRecord and returns or raises."""
