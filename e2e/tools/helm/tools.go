//go:build tools

// Package tools pins helm for the e2e harness (see build-tools.sh).
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
