//go:build tools

// Package tools pins go-containerregistry's crane, which assembles the OCI images of
// the real-node e2e path without Docker (see e2e/build-node.sh, e2e/images.sh).
package tools

import (
	_ "github.com/google/go-containerregistry/cmd/crane"
)
