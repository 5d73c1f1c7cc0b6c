// Package perm gives the files and directories rankzip writes for users
// (checkpoints, adapters, datasets, dumps) the modes that os.Create and
// os.Mkdir would: 0666 and 0777 under the process's umask. Files written
// through os.CreateTemp (0600) and directories made by os.MkdirTemp (0700),
// as atomic writes do, are set to these modes before they are renamed into
// place, so that a checkpoint can be read by other users and by containers,
// like any other file the user creates.
package perm

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// File is the mode of a new user file: 0666 under the umask.
func File() os.FileMode { return 0o666 &^ umask() }

// Dir is the mode of a new user directory: 0777 under the umask.
func Dir() os.FileMode { return 0o777 &^ umask() }

var mu sync.Mutex

// umask reads the process's umask from /proc/self/status (Linux 4.7+), else
// by setting it and putting it back (under a lock; a file another goroutine
// creates in between gets the umask 022).
func umask() os.FileMode {
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Umask:"); ok {
				if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
					return os.FileMode(m)
				}
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	m := syscall.Umask(0o022)
	syscall.Umask(m)
	return os.FileMode(m)
}
