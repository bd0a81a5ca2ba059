//! The agent's library: the relay that carries the swarm runtime's connections to replicas
//! ([`relay`]), shared with the deploy tool, which speaks the other side of its frames.

pub mod relay;
