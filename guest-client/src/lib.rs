//! The VM's side of a vhost-user-blk channel, in userspace.
