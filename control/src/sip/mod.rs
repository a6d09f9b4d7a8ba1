//! SIP text: SDP bodies ([`sdp`]), SIP URIs and GRUUs ([`uri`]), and the
//! offer/answer rules that turn a body into a session's streams and a body
//! for the other party ([`negotiation`]). Pure functions over text and the
//! negotiated state; nothing here holds a session or talks to a worker.

pub mod codec_rules;
pub mod crypto;
pub(crate) mod negotiation;
pub mod sdp;
pub mod uri;
