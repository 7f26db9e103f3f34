-- Exactly-once state of persistent sessions that must survive a restart.
--
-- The packet id a queued QoS>=1 delivery goes out with: chosen when it is
-- queued, so a redelivery (DUP) carries the id of the first attempt
-- [MQTT-4.4.0-1], also after a restart. NULL for rows stored before ids were.
ALTER TABLE session_messages ADD COLUMN packet_id BIGINT;

-- Inbound QoS 2 packet ids received (PUBREC sent) and not yet released: a
-- resend of one is acknowledged again, not routed again [MQTT-4.3.3-10].
CREATE TABLE session_incoming_qos2 (
    client_id  TEXT NOT NULL,
    packet_id  BIGINT NOT NULL,
    PRIMARY KEY (client_id, packet_id)
);

-- Outbound QoS 2 exchanges past PUBREC, waiting for PUBCOMP: the next
-- connection resends PUBREL for them, not the PUBLISH.
CREATE TABLE session_pending_releases (
    client_id  TEXT NOT NULL,
    packet_id  BIGINT NOT NULL,
    PRIMARY KEY (client_id, packet_id)
);
