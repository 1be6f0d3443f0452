//! Workload identity of a process, with the design's ids and SPIFFE ids.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub id: String,
    pub kind: IdentityKind,
    pub spiffe_id: String,
}

/// `user:<name>:<exe>`, the identity of a process that belongs to no more
/// specific workload.
pub fn user_identity(trust_domain: &str, host: &str, user: &str, uid: u32, exe: &str) -> Identity {
    let exe_path = exe.trim_start_matches('/');
    Identity {
        id: format!("user:{user}:{exe}"),
        kind: IdentityKind::User,
        spiffe_id: format!("spiffe://{trust_domain}/host/{host}/uid/{uid}/exe/{exe_path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_identity_ids() {
        let id = user_identity("example.org", "web-1", "ana", 1000, "/usr/bin/cat");
        assert_eq!(id.id, "user:ana:/usr/bin/cat");
        assert_eq!(
            id.spiffe_id,
            "spiffe://example.org/host/web-1/uid/1000/exe/usr/bin/cat"
        );
        assert_eq!(id.kind, IdentityKind::User);
    }
}
