//go:build tools

// The Kubernetes components scripts/cluster builds for the lab, pinned by this
// module's go.mod (k8s.io/kubernetes at one release, each staging module
// replaced by the matching v0.X.Y). Never compiled; `go mod tidy` keeps their
// dependencies listed.
package cluster

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
