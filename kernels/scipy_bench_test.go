package kernels_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rankzip/rankzip/kernels"
)

// scipyCholesky times scipy.linalg.cholesky (lower, no finiteness check: the
// call as a user makes it on a C-ordered array) of an n×n SPD matrix, one n
// per input line, the seconds on the output.
const scipyCholesky = `
import sys, time
import numpy as np, scipy.linalg as sl
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    a = np.random.default_rng(1).uniform(-1, 1, (n, n))
    a = (a + a.T) / 2 + n * np.eye(n)
    t = time.perf_counter()
    sl.cholesky(a, lower=True, check_finite=False)
    print(time.perf_counter() - t, flush=True)
`

// BenchmarkCholeskyScipy prints the seconds of the default backend's
// Cholesky and of scipy's (linked to the system's LAPACK) at 2048 and 4096,
// interleaved round by round in one run so that both see the same machine
// load, with the ratio of their medians. It needs a python3 with numpy and
// scipy ($RANKZIP_PYTHON, else /usr/bin/python3, else python3 on the PATH;
// Debian: apt install python3-scipy) and skips without one. Run it with
//
//	go test -run XXX -bench CholeskyScipy -benchtime 1x ./kernels/
func BenchmarkCholeskyScipy(b *testing.B) {
	k := kernels.Default()
	py, err := startScipy()
	if err != nil {
		b.Skip(err)
	}
	defer py.close()
	const rounds = 7
	for b.Loop() {
		fmt.Printf("Cholesky, %s backend against scipy %s, %d interleaved rounds\n", k.Name(), py.version, rounds)
		fmt.Printf("%6s %12s %12s %9s\n", "n", "ours s", "scipy s", "ours/scipy")
		for _, n := range []int{2048, 4096} {
			a := randSym(n, float64(n))
			var ours, theirs []float64
			for range rounds {
				t0 := time.Now()
				if _, err := k.Cholesky(a); err != nil {
					b.Fatal(err)
				}
				ours = append(ours, time.Since(t0).Seconds())
				s, err := py.time(n)
				if err != nil {
					b.Fatal(err)
				}
				theirs = append(theirs, s)
			}
			fmt.Printf("%6d %12.4f %12.4f %9.3f   (medians; minima %.4f and %.4f)\n", n, median(ours), median(theirs),
				median(ours)/median(theirs), slices.Min(ours), slices.Min(theirs))
		}
	}
}

func median(x []float64) float64 {
	s := slices.Clone(x)
	slices.Sort(s)
	return s[len(s)/2]
}

// scipyProc is a python process running scipyCholesky.
type scipyProc struct {
	cmd     *exec.Cmd
	in      *bufio.Writer
	out     *bufio.Scanner
	version string
	stdin   io.Closer
}

func startScipy() (*scipyProc, error) {
	var tried []string
	for _, py := range []string{os.Getenv("RANKZIP_PYTHON"), "/usr/bin/python3", "python3"} {
		if py == "" {
			continue
		}
		p, err := startScipyWith(py)
		if err == nil {
			return p, nil
		}
		tried = append(tried, fmt.Sprintf("%s: %v", py, err))
	}
	return nil, fmt.Errorf("no python3 with numpy and scipy (Debian: apt install python3-scipy; or set RANKZIP_PYTHON): %s", strings.Join(tried, "; "))
}

func startScipyWith(py string) (*scipyProc, error) {
	version, err := exec.Command(py, "-c", "import scipy; print(scipy.__version__)").Output()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(py, "-c", scipyCholesky)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &scipyProc{cmd: cmd, in: bufio.NewWriter(stdin), out: bufio.NewScanner(stdout), version: strings.TrimSpace(string(version)), stdin: stdin}
	if !p.out.Scan() || p.out.Text() != "ready" {
		p.close()
		return nil, fmt.Errorf("the timing script did not start")
	}
	return p, nil
}

func (p *scipyProc) time(n int) (float64, error) {
	fmt.Fprintln(p.in, n)
	if err := p.in.Flush(); err != nil {
		return 0, err
	}
	if !p.out.Scan() {
		return 0, fmt.Errorf("scipy's timing script stopped: %v", p.out.Err())
	}
	return strconv.ParseFloat(p.out.Text(), 64)
}

func (p *scipyProc) close() {
	p.stdin.Close()
	p.cmd.Wait()
}
