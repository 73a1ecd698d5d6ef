//go:build tools

// flanneld for the lab's kernel node (scripts/cluster build), pinned by this
// module's go.mod: a module of its own, because flannel's client-go is not
// the Kubernetes release's. Never compiled; `go mod tidy` keeps its
// dependencies listed.
package flannel

import _ "github.com/flannel-io/flannel"
