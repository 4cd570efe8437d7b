//go:build tools

// Package tools pins the Kubernetes control-plane binaries used by the e2e
// harness. It is never compiled; build-tools.sh runs `go build` on these
// packages from this module so that go.mod/go.sum fix their versions.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
