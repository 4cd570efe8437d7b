//go:build tools

// Package tools pins containerd 2.x (daemon and runc shim) for the real-node e2e
// path (see e2e/build-node.sh).
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
