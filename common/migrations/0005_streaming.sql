-- Transcoding while the upload is still arriving.
--
-- jobs.priority: 1 = normal, 0 = background. Workers claim higher priorities first, so a
-- background job (a transcode of an upload still in progress) runs only when a worker has
-- nothing else to do. A background job can be parked (run_after far in the future) until it is
-- promoted; promotion raises its priority and makes it runnable at once.
ALTER TABLE jobs ADD COLUMN priority BIGINT NOT NULL DEFAULT 1;

-- moments.detail: a JSON object the worker keeps up to date while it works (which path the
-- transcode took and why, seconds encoded against seconds received, the early poster's key).
ALTER TABLE moments ADD COLUMN detail TEXT NOT NULL DEFAULT '{}';
