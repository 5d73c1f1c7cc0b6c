package perm

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// File and Dir are the modes os.Create and os.Mkdir give under the umask.
func TestModesFollowUmask(t *testing.T) {
	dir := t.TempDir()
	for _, mask := range []int{0o022, 0o027, 0o077, 0o002} {
		old := syscall.Umask(mask)
		f, err := os.Create(filepath.Join(dir, "f"))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := os.Mkdir(filepath.Join(dir, "d"), 0o777); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(filepath.Join(dir, "f"))
		di, _ := os.Stat(filepath.Join(dir, "d"))
		if File() != fi.Mode().Perm() || Dir() != di.Mode().Perm() {
			t.Errorf("umask %03o: File %v Dir %v, os.Create and os.Mkdir give %v and %v", mask, File(), Dir(), fi.Mode().Perm(), di.Mode().Perm())
		}
		syscall.Umask(old)
		os.Remove(filepath.Join(dir, "f"))
		os.Remove(filepath.Join(dir, "d"))
	}
}
