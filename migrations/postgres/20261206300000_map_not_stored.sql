-- The map's retained messages (map/...) are rebuilt and republished at
-- start and no longer stored: drop the rows earlier versions wrote.
DELETE FROM retained WHERE topic = 'map' OR topic LIKE 'map/%';
