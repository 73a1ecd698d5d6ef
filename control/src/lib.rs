//! nodeplane-control
