// Package s3fake serves the S3 protocol from memory (github.com/johannesboyne/gofakes3)
// on a local address, for tests of rankzip's S3 artifact store and of
// workers that share one: a real HTTP server speaking S3, no credentials
// checked, nothing kept after Close.
package s3fake

import (
	"context"
	"fmt"
	"net"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// Server is a running fake S3 server.
type Server struct {
	URL    string // http://host:port, the endpoint (AWS_ENDPOINT_URL)
	Client *s3.Client
	srv    *http.Server
}

// Start serves on addr (host:port; "127.0.0.1:0" for a free port) and
// creates the buckets.
func Start(addr string, buckets ...string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("s3fake: %w", err)
	}
	faker := gofakes3.New(s3mem.New(), gofakes3.WithLogger(gofakes3.DiscardLog()))
	s := &Server{URL: "http://" + ln.Addr().String(), srv: &http.Server{Handler: faker.Server()}}
	go s.srv.Serve(ln)
	s.Client = s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(s.URL),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKeyID, SecretAccessKey, ""),
	})
	for _, b := range buckets {
		if _, err := s.Client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(b)}); err != nil {
			s.Close()
			return nil, fmt.Errorf("s3fake: create bucket %s: %w", b, err)
		}
	}
	return s, nil
}

// The credentials Env hands out (the server accepts any).
const (
	AccessKeyID     = "s3fake-key-id"
	SecretAccessKey = "s3fake-secret"
)

// Env is the environment that points the AWS SDK (and so a rankzip process
// given --store s3://bucket/prefix) at the server.
func (s *Server) Env() []string {
	return []string{
		"AWS_ENDPOINT_URL=" + s.URL,
		"AWS_ACCESS_KEY_ID=" + AccessKeyID,
		"AWS_SECRET_ACCESS_KEY=" + SecretAccessKey,
		"AWS_REGION=us-east-1",
	}
}

// Close stops the server; its content is lost.
func (s *Server) Close() { s.srv.Close() }
