-- Who sees each device on the shared map: 'public' or 'private' (its owner
-- and admins only). Devices made before this existed stay public.
ALTER TABLE devices ADD COLUMN visibility TEXT NOT NULL DEFAULT 'public';
