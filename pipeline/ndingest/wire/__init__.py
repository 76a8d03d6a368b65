"""How voxels travel between hosts, shared by the readers, the stores and the server:
`client` (the retrying HTTP session, its pools and in-flight bounds) and `cutouts`
(ndstore's cutout formats, both ways). It imports only the core."""
