//go:build tools

// Package tools pins CoreDNS, the real node's cluster DNS (see e2e/build-node.sh).
package tools

import (
	_ "github.com/coredns/coredns"
)
