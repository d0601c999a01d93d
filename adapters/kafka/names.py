"""Topic names, consumer group ids and the transport headers eventbus adds on Kafka.

<stream>                       the stream (every group reads it)
<stream>.<group>.retry.<n>     delayed-retry tier n (0-based) of one group
<stream>.<group>.replay        dead letters replayed to one group
<stream>.<group>.dlq           dead letters of one group
group <group>                  the consumer group of an eventbus group
group <group>.dlq-replay       how far the dead letters of <group> were replayed
"""

from __future__ import annotations

from eventbus.toolkit import dead_letter_name, replay_name, retry_name

#: epoch milliseconds before which a retry-topic record must not be handled
DUE_HEADER = "x-eventbus-due"
#: where a retried / replayed record first was in its stream (partition, offset)
ORIGIN_PARTITION_HEADER = "x-eventbus-origin-partition"
ORIGIN_OFFSET_HEADER = "x-eventbus-origin-offset"


#: the side topics of a group are named as on every broker (DESIGN §3.5); tiers 0-based
retry_topic = retry_name
replay_topic = replay_name
dlq_topic = dead_letter_name


def replay_group(group: str) -> str:
    return f"{group}.dlq-replay"
