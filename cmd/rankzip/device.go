package main

import "flag"

const deviceUsage = "compute device: auto (the GPU where rankzip was built with -tags cuda and one answers, else the CPU), cpu or cuda (default $RANKZIP_DEVICE, else auto); cuda where none answers is an error"

// addDeviceFlag adds --device to a command that computes.
func addDeviceFlag(fs *flag.FlagSet) *string { return fs.String("device", "", deviceUsage) }
