package workflows

import (
	"fmt"
	"strings"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/rankzip/rankzip/activities"
)

// Register registers rankzip's workflows and a's activities with a worker
// (which must poll TaskQueue).
func Register(r worker.Registry, a *activities.Activities) {
	r.RegisterWorkflow(CompressModel)
	r.RegisterActivity(a)
}

// Task queues by capability. Workflows and the activities of a job that
// asks for no device go to TaskQueue, which every worker polls. The
// activities of a job that asks for device cuda go to GPUTaskQueue, which
// only workers with a GPU poll. Evaluate and Report read and write the
// directory Export wrote on its host, so they go to the exporting worker's
// host queue (HostTaskQueue), as samples-go's fileprocessing does.
const GPUTaskQueue = "rankzip-gpu"

// HostTaskQueue is the queue of the workers of one host (those that see its
// local files) with a GPU or without one.
func HostTaskQueue(host string, gpu bool) string {
	kind := "cpu"
	if gpu {
		kind = "gpu"
	}
	return fmt.Sprintf("rankzip-host-%s-%s", strings.ReplaceAll(host, " ", "_"), kind)
}

// NewWorkers makes the workers of one process: TaskQueue (workflows and
// activities), GPUTaskQueue when gpu, and host's HostTaskQueue, whose name
// it sets in a.HostQueue. Each runs up to slots activities at once. (One
// slot supplier shared by all would starve them: a worker reserves a slot
// before it long-polls its queue, and holds it for the poll's minute.)
func NewWorkers(c client.Client, a *activities.Activities, gpu bool, host string, slots int) ([]worker.Worker, error) {
	if host == "" {
		return nil, fmt.Errorf("workers need a host name for their host queue")
	}
	if slots < 1 {
		return nil, fmt.Errorf("activity slots %d: must be at least 1", slots)
	}
	a.HostQueue = HostTaskQueue(host, gpu)
	queues := []string{TaskQueue, a.HostQueue}
	if gpu {
		queues = append(queues, GPUTaskQueue)
	}
	var ws []worker.Worker
	for i, q := range queues {
		w := worker.New(c, q, worker.Options{MaxConcurrentActivityExecutionSize: slots})
		if i == 0 {
			Register(w, a)
		} else {
			w.RegisterActivity(a)
		}
		ws = append(ws, w)
	}
	return ws, nil
}
