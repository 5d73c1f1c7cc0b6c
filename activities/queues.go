package activities

import (
	"context"
	"fmt"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
)

// Pollers returns how many workers the Temporal server saw poll the
// activity task queue queue lately (DescribeTaskQueue lists those of the
// last few minutes): the workflow asks it when a task of that queue waited
// too long, to tell a queue nobody serves from busy workers.
func (a *Activities) Pollers(ctx context.Context, queue string) (int, error) {
	resp, err := activity.GetClient(ctx).DescribeTaskQueue(ctx, queue, enumspb.TASK_QUEUE_TYPE_ACTIVITY)
	if err != nil {
		return 0, fmt.Errorf("describe task queue %s: %w", queue, err)
	}
	return len(resp.GetPollers()), nil
}
