//! nodeplane-dataplane
