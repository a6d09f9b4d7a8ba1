//! baton data plane.
