package workflows

import (
	"go.temporal.io/sdk/worker"

	"github.com/rankzip/rankzip/activities"
)

// Register registers rankzip's workflows and a's activities with a worker
// (which must poll TaskQueue).
func Register(r worker.Registry, a *activities.Activities) {
	r.RegisterWorkflow(CompressModel)
	r.RegisterActivity(a)
}
