//go:build tools

// Package tools pins the node binaries of the real-node e2e path (e2e/build-node.sh):
// kubelet and kube-proxy, from the same k8s.io/kubernetes version as tools/kubernetes
// (build-node.sh refuses to build when the two differ). A module of its own, with the
// same 33 staging replace lines, so that the control plane's go.sum (and with it
// build-tools.sh's cache key) does not change: these packages need 20 more sums.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
