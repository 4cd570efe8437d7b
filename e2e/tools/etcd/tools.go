//go:build tools

// Package tools pins etcd and etcdctl for the e2e harness (see build-tools.sh).
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
