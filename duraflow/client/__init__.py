"""What users hold: Client and WorkflowHandle, request batching and the blocking runner; they
reach partitions through one small Host protocol, which the in-process and Ray hosts implement."""
