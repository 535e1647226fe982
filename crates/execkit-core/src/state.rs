//! Where execkit keeps its files on this host: the state directory (journal,
//! spool of full outputs, session records, shell history) and the
//! directories it makes for sockets and tokens. Every directory execkit
//! writes is created 0700 and verified to be this user's, never reached
//! through another user's symlink; a shared fallback is never used.

pub use crate::paths::{
    private_dir, private_state_dir, socket_dir, spool_dir, state_dir, verified_dir,
};
