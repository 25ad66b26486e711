"""The wire format: golden bytes per message, hostile input, and the named limit errors.

The golden hex literals pin the encoding byte for byte: if a test here fails after a schema
change, the wire format changed. Adding a message needs a golden case (a test insists), and
regenerating a literal is a deliberate act: `encode(case).hex()`, pasted below.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from types import UnionType
from typing import (
    Annotated,
    Any,
    Literal,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
)

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.api import (
    ActionOutcome,
    ActionOutcomeRequest,
    CreateRoomRequest,
    DeleteRoomRequest,
    EdgeGone,
    EdgeHeartbeat,
    GetParticipantRequest,
    HealthReply,
    HealthRequest,
    ListParticipantsRequest,
    ListRoomsRequest,
    MediaAssignment,
    MediaAssignRequest,
    MuteTrackRequest,
    OkReply,
    ParticipantReply,
    RemoveParticipantRequest,
    RoomListReply,
    RoomReply,
    SendDataRequest,
    UpdateParticipantRequest,
    UpdateRoomMetadataRequest,
)
from schemas.client import (
    Ack,
    ActiveSpeakersChanged,
    AudienceChanged,
    CountsChanged,
    DataReceived,
    Disconnect,
    Error,
    GetParticipants,
    HandChanged,
    Join,
    JoinAccepted,
    LayersWanted,
    Leave,
    LowerHand,
    MediaMoved,
    MuteTrack,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantsPage,
    ParticipantUpdated,
    Ping,
    Pong,
    PublishData,
    PublishedLayer,
    PublishTrack,
    RaiseHand,
    RestartIce,
    RoomUpdated,
    SetAttributes,
    SetMetadata,
    SetTrackLayers,
    SetVideoQuality,
    SignalAnswer,
    SignalCandidate,
    SignalOffer,
    Subscribe,
    TierChanged,
    TrackMuted,
    TrackPublished,
    TrackUnpublished,
    UnpublishTrack,
    Unsubscribe,
    VideoLayer,
    ViewerUpdated,
)
from schemas.codec import (
    MAX_FRAME_BYTES,
    MaxBytes,
    Message,
    Struct,
    decode,
    decode_as,
    decode_trusted,
    encode,
    registered,
    to_wire,
)
from schemas.errors import (
    FieldTooLong,
    ForbiddenCharacter,
    FrameTooLarge,
    InvalidField,
    MalformedFrame,
    PayloadTooLarge,
    SchemaError,
    UnknownType,
    UnsupportedVersion,
)
from schemas.events import (
    ParticipantJoinedEvent,
    ParticipantLeftEvent,
    RoomFinished,
    RoomStarted,
    TrackPublishedEvent,
    TrackUnpublishedEvent,
)
from schemas.log import (
    AttributesSet,
    EdgeLost,
    ForwarderAssigned,
    GraceExpired,
    JoinRequested,
    LeaveRequested,
    MetadataSet,
    ParticipantRemoveRequested,
    ParticipantUpdateRequested,
    ResumeRequested,
    RoomCreateRequested,
    RoomDeleteRequested,
    RoomMetadataSet,
    RoomTimedOut,
    SessionDisconnected,
    SessionsAlive,
    SubscriptionRequested,
    TrackMuteForced,
    TrackMuteRequested,
    TrackPublishRequested,
    TrackUnpublishRequested,
)
from schemas.media import (
    ForwarderHeartbeat,
    ForwarderOk,
    ForwarderSdp,
    IngressEnded,
    IngressOffer,
    IngressTrack,
    MediaCandidate,
    MediaSession,
    MediaSubscribedTrack,
    MediaTrackState,
    PublisherLayers,
    PublishOffer,
    RelayAccepted,
    RelayCodec,
    RelayKeyframeRequest,
    RelayPacket,
    RelayStart,
    RelayStop,
    RestartSubscription,
    SpeakerReport,
    SubscriberAnswer,
    SubscriberLayers,
)
from schemas.models import ActiveSpeaker, Counts, Grant, ParticipantInfo, RoomInfo, TrackInfo
from tests.agent_cases import AGENT_CASES, AGENT_GOLDEN_HEX

# --------------------------------------------------------------------------- golden cases

GRANT = Grant(can_publish=False, can_publish_data=False, can_moderate=True)
TRACK = TrackInfo(sid="TR_cam", kind="video", source="camera", name="Cam", muted=True)
AUDIO = TrackInfo(sid="TR_mic", kind="audio")
SPEAKER = ParticipantInfo(
    sid="PA_1",
    id="alice",
    name="Zoë",
    kind="agent",
    metadata='{"role":"host"}',
    attributes={"hand": "raised", "lang": "fr"},
    tracks=(TRACK, AUDIO),
    joined_at=1_700_000_000_123,
)
VIEWER = ParticipantInfo(sid="PA_2", id="bob", is_viewer=True)
COUNTS = Counts(speaker=2, viewer=10_000, total=10_002)
ROOM = RoomInfo(
    id="webinar-2026-05",
    sid="RM_1",
    metadata="town hall",
    max_participants=100_000,
    departure_timeout=30,
    livestream=True,
    created_at=1_700_000_000_000,
    counts=COUNTS,
)
BARE_ROOM = RoomInfo(id="r", sid="RM_2")
AT = 1_700_000_000_456
"""A millisecond timestamp (above 2**32, so it takes a uint64 on the wire)."""

CASES: tuple[Message, ...] = (
    # client -> edge
    Join(id=1, token="eyJ.tok.sig", room_id="webinar-2026-05", name="Zoë", auto_subscribe=False),
    Leave(id=2),
    PublishTrack(id=3, kind="video", source="screen_share", name="Slides"),
    UnpublishTrack(id=4, track_sid="TR_cam"),
    MuteTrack(id=5, track_sid="TR_mic", muted=True),
    SetMetadata(id=6, metadata='{"status":"away"}'),
    SetAttributes(id=7, attributes={"hand": "", "lang": "de"}),
    PublishData(
        id=8, payload=b"\x00\x01\xffhi", reliable=False, topic="chat", destination_ids=("bob",)
    ),
    Subscribe(id=9, participant_id="alice", kind="video"),
    Unsubscribe(id=10, participant_id="alice", kind="audio"),
    GetParticipants(id=11, tier="viewer", limit=100, cursor="c:42:bob"),
    RaiseHand(id=12),
    LowerHand(id=13),
    SignalOffer(id=14, target="publisher", sdp="v=0\r\n", ice_restart=True),
    SignalAnswer(id=15, target="subscriber", sdp="v=0\r\n"),
    SignalCandidate(
        id=16,
        target="publisher",
        candidate="candidate:1 1 udp 1 127.0.0.1 9 typ host",
        sdp_mid="0",
        sdp_mline_index=0,
    ),
    Ping(id=17, at=AT),
    SetVideoQuality(id=18, track_sid="TR_cam", quality="low", width=320, height=180),
    SetTrackLayers(
        id=19,
        track_sid="TR_cam",
        layers=(
            PublishedLayer(rid="q", width=160, height=90, max_bitrate=150_000),
            PublishedLayer(rid="f", width=640, height=360, max_bitrate=1_700_000),
        ),
    ),
    # edge -> client
    LayersWanted(track_sid="TR_cam", rids=("q", "f")),
    VideoLayer(track_sid="TR_cam", rid="h"),
    Ack(id=3, sid="TR_screen"),
    Error(id=9, code="NOT_PUBLISHED", message="alice has no video"),
    JoinAccepted(
        id=1,
        seq=41,
        room=ROOM,
        participant=VIEWER,
        grant=GRANT,
        speakers=(SPEAKER,),
        counts=COUNTS,
        resume_token="eyJ.resume.sig",
        epoch=3,
    ),
    ParticipantJoined(seq=42, participant=SPEAKER),
    ParticipantLeft(seq=43, sid="PA_1", participant_id="alice", reason="CLIENT_LEFT"),
    ParticipantUpdated(seq=44, participant=SPEAKER),
    TrackPublished(seq=45, participant_id="alice", track=TRACK),
    TrackUnpublished(seq=46, participant_id="alice", track_sid="TR_cam", kind="video"),
    TrackMuted(seq=47, participant_id="alice", track_sid="TR_mic", muted=False),
    CountsChanged(seq=48, counts=COUNTS),
    ActiveSpeakersChanged(
        speakers=(
            ActiveSpeaker(participant_id="alice", level=0.5),
            ActiveSpeaker(participant_id="bob", level=0.125),
        )
    ),
    RoomUpdated(seq=49, room=BARE_ROOM),
    HandChanged(seq=50, participant=VIEWER, raised=True),
    AudienceChanged(seq=51, counts=COUNTS),
    ViewerUpdated(seq=51, participant=VIEWER),
    DataReceived(
        payload=b"hello",
        sender_id="alice",
        sender_sid="PA_1",
        topic="chat",
        destination_ids=("bob", "carol"),
    ),
    TierChanged(seq=52, participant=VIEWER, grant=Grant(can_publish=False), resume_token="r"),
    ParticipantsPage(id=11, participants=(SPEAKER, VIEWER), next_cursor="c:42:bob", total=10_002),
    Disconnect(reason="DUPLICATE_IDENTITY", message="joined elsewhere", can_reconnect=True),
    MediaMoved(),
    Pong(id=17, at=AT, server_at=AT + 3),
    # server API and internal RPC
    CreateRoomRequest(
        room_id="webinar-2026-05", max_participants=500, metadata="m", livestream=True
    ),
    ListRoomsRequest(room_ids=("a", "b")),
    DeleteRoomRequest(room_id="webinar-2026-05"),
    ListParticipantsRequest(room_id="webinar-2026-05", tier="speaker", limit=10),
    GetParticipantRequest(room_id="webinar-2026-05", participant_id="alice"),
    UpdateParticipantRequest(
        room_id="webinar-2026-05",
        participant_id="bob",
        is_viewer=False,
        grant=GRANT,
        attributes={"hand": ""},
    ),
    RemoveParticipantRequest(room_id="webinar-2026-05", participant_id="bob"),
    MuteTrackRequest(room_id="webinar-2026-05", participant_id="alice", track_sid="TR_mic"),
    UpdateRoomMetadataRequest(room_id="webinar-2026-05", metadata=""),
    SendDataRequest(room_id="webinar-2026-05", payload=b"\x00", topic="t", reliable=False),
    RoomReply(room=ROOM),
    RoomListReply(rooms=(ROOM, BARE_ROOM)),
    ParticipantReply(participant=SPEAKER),
    OkReply(),
    EdgeHeartbeat(edge_id="edge-1", at=AT, sockets=12_345),
    EdgeGone(edge_id="edge-1", at=AT),
    HealthRequest(),
    HealthReply(service="statekeeper", ok=True, applied_seq=2**40, rooms=7),
    # public events
    RoomStarted(id="EV_1", at=AT, room=ROOM),
    RoomFinished(id="EV_2", at=AT, room=BARE_ROOM, reason="ROOM_DELETED"),
    ParticipantJoinedEvent(
        id="EV_3", at=AT, room_id="webinar-2026-05", room_sid="RM_1", participant=SPEAKER
    ),
    ParticipantLeftEvent(
        id="EV_4",
        at=AT,
        room_id="webinar-2026-05",
        room_sid="RM_1",
        participant=VIEWER,
        reason="REMOVED",
    ),
    TrackPublishedEvent(
        id="EV_5",
        at=AT,
        room_id="webinar-2026-05",
        room_sid="RM_1",
        participant=SPEAKER,
        track=TRACK,
    ),
    TrackUnpublishedEvent(
        id="EV_6",
        at=AT,
        room_id="webinar-2026-05",
        room_sid="RM_1",
        participant=SPEAKER,
        track=AUDIO,
    ),
    # room log
    JoinRequested(
        room_id="webinar-2026-05",
        at=AT,
        sid="PA_2",
        participant_id="bob",
        name="Bob",
        is_viewer=True,
        kind="sip",
        grant=GRANT,
        metadata="m",
        attributes={"a": "b"},
        edge_id="edge-1",
        token_id="jti-1",
        token_expires_at=1_700_003_600,
        reply_to="sess.PA_2",
        req=1,
    ),
    ResumeRequested(
        room_id="r",
        at=AT,
        sid="PA_2",
        edge_id="edge-2",
        reply_to="sess.PA_2",
        req=2,
        epoch=3,
        room_sid="RM_7",
    ),
    LeaveRequested(room_id="r", at=AT, sid="PA_2"),
    SessionDisconnected(room_id="r", at=AT, sid="PA_2", edge_id="edge-1"),
    TrackPublishRequested(room_id="r", at=AT, sid="PA_1", track=TRACK, req=3),
    TrackUnpublishRequested(room_id="r", at=AT, sid="PA_1", track_sid="TR_cam"),
    TrackMuteRequested(room_id="r", at=AT, sid="PA_1", track_sid="TR_mic", muted=True),
    MetadataSet(room_id="r", at=AT, sid="PA_1", metadata="busy"),
    AttributesSet(room_id="r", at=AT, sid="PA_1", attributes={"hand": "raised"}),
    SubscriptionRequested(
        room_id="r", at=AT, sid="PA_2", participant_id="alice", kind="video", subscribed=True
    ),
    RoomCreateRequested(
        room_id="r",
        at=AT,
        room_sid="RM_2",
        max_participants=10,
        empty_timeout=60,
        reply_to="_INBOX.x",
        req=4,
    ),
    RoomDeleteRequested(room_id="r", at=AT),
    RoomMetadataSet(room_id="r", at=AT, metadata="new"),
    ParticipantUpdateRequested(
        room_id="r", at=AT, participant_id="bob", is_viewer=False, grant=Grant(), name="Bob B."
    ),
    ParticipantRemoveRequested(room_id="r", at=AT, participant_id="bob"),
    TrackMuteForced(room_id="r", at=AT, participant_id="alice", track_sid="TR_mic", muted=True),
    GraceExpired(room_id="r", at=AT, sid="PA_2", disconnected_at=AT - 20_000),
    RoomTimedOut(room_id="r", at=AT, room_sid="RM_2", empty_since=AT - 300_000),
    EdgeLost(room_id="r", at=AT, edge_id="edge-1"),
    SessionsAlive(room_id="r", at=AT, edge_id="edge-1", sids=("PA_1", "PA_2")),
    ForwarderAssigned(room_id="r", at=AT, sid="PA_2", forwarder_id="FW_1"),
    # client <-> edge, media
    RestartIce(id=21, track_sid="TR_cam"),
    # edge <-> statekeeper, media
    MediaAssignRequest(room_id="r", sid="PA_2", track_sid="TR_cam"),
    MediaAssignment(forwarder_id="FW_1", kind="video"),
    # edge <-> statekeeper, a reply the edge missed
    ActionOutcomeRequest(room_id="r", seq=42, reply_to="stagecast.sess.edge-1.PA_2.c1"),
    ActionOutcome(folded=True, frame=encode(Ack(id=7))),
    # statekeeper / edge / forwarders
    MediaSession(
        room_id="r",
        sid="PA_2",
        identity="bob",
        subject="stagecast.sess.edge-1.PA_2",
        seq=42,
        tracks=(MediaTrackState(track_sid="TR_mic", kind="audio", muted=True),),
        subscriptions=(
            MediaSubscribedTrack(
                track_sid="TR_cam",
                kind="video",
                publisher_id="alice",
                publisher_sid="PA_1",
                forwarder_id="FW_2",
            ),
        ),
    ),
    PublishOffer(room_id="r", sid="PA_1", track_sid="TR_cam", kind="video", sdp="v=0\r\n"),
    IngressOffer(
        room_id="r",
        sid="PA_1",
        subject="stagecast.sess.ED_1.PA_1",
        tracks=(IngressTrack(mid="0", track_sid="TR_cam", kind="video"),),
        sdp="v=0\r\n",
    ),
    IngressEnded(room_id="r", sid="PA_1", reason="the connection failed"),
    SubscriberAnswer(room_id="r", sid="PA_2", track_sid="TR_cam", sdp="v=0\r\n"),
    MediaCandidate(
        room_id="r",
        sid="PA_2",
        track_sid="TR_cam",
        target="subscriber",
        candidate="candidate:1 1 UDP 2122252543 127.0.0.1 50000 typ host",
        sdp_mid="0",
        sdp_mline_index=0,
    ),
    RestartSubscription(room_id="r", sid="PA_2", track_sid="TR_cam"),
    SubscriberLayers(room_id="r", sid="PA_2", track_sid="TR_cam", quality="high"),
    PublisherLayers(
        room_id="r",
        sid="PA_1",
        track_sid="TR_cam",
        layers=(PublishedLayer(rid="h", width=320, height=180, max_bitrate=500_000),),
    ),
    ForwarderSdp(sdp="v=0\r\n"),
    ForwarderOk(),
    RelayStart(room_id="r", track_sid="TR_cam", to_forwarder="FW_2"),
    RelayAccepted(
        codec=RelayCodec(
            kind="video",
            mime_type="video/VP8",
            clock_rate=90000,
            parameters={"max-fr": "30"},
        )
    ),
    RelayStop(room_id="r", track_sid="TR_cam", to_forwarder="FW_2"),
    RelayKeyframeRequest(track_sid="TR_cam"),
    RelayPacket(
        track_sid="TR_cam",
        sequence_number=65535,
        timestamp=4_294_967_295,
        marker=1,
        payload=b"\x10\x00\x9d\x01\x2a",
        ssrc=123456789,
        payload_type=96,
        voice_activity=True,
        audio_level=30,
    ),
    SpeakerReport(
        room_id="webinar-2026-05",
        forwarder_id="FW_1",
        speakers=(ActiveSpeaker(participant_id="alice", level=0.25),),
    ),
    ForwarderHeartbeat(
        forwarder_id="FW_1",
        at=AT,
        peer_connections=3,
        published_tracks=1,
        legs=2,
        packets_per_s=900,
    ),
)


GOLDEN_HEX: dict[str, str] = {
    "join": (
        "87a174a46a6f696ea17601a2696401a5746f6b656eab65794a2e746f6b2e736967a7726f6f6d5f6964af7765"
        "62696e61722d323032362d3035a46e616d65a45a6fc3abae6175746f5f737562736372696265c2"
    ),
    "leave": "83a174a56c65617665a17601a2696402",
    "publish_track": (
        "86a174ad7075626c6973685f747261636ba17601a2696403a46b696e64a5766964656fa6736f75726365ac73"
        "637265656e5f7368617265a46e616d65a6536c69646573"
    ),
    "unpublish_track": (
        "84a174af756e7075626c6973685f747261636ba17601a2696404a9747261636b5f736964a654525f63616d"
    ),
    "mute_track": (
        "85a174aa6d7574655f747261636ba17601a2696405a9747261636b5f736964a654525f6d6963a56d75746564c3"
    ),
    "set_metadata": (
        "84a174ac7365745f6d65746164617461a17601a2696406a86d65746164617461b17b22737461747573223a22"
        "61776179227d"
    ),
    "set_attributes": (
        "84a174ae7365745f61747472696275746573a17601a2696407aa6174747269627574657382a468616e64a0a4"
        "6c616e67a26465"
    ),
    "publish_data": (
        "87a174ac7075626c6973685f64617461a17601a2696408a77061796c6f6164c4050001ff6869a872656c6961"
        "626c65c2a5746f706963a463686174af64657374696e6174696f6e5f69647391a3626f62"
    ),
    "subscribe": (
        "85a174a9737562736372696265a17601a2696409ae7061727469636970616e745f6964a5616c696365a46b69"
        "6e64a5766964656f"
    ),
    "unsubscribe": (
        "85a174ab756e737562736372696265a17601a269640aae7061727469636970616e745f6964a5616c696365a4"
        "6b696e64a5617564696f"
    ),
    "get_participants": (
        "86a174b06765745f7061727469636970616e7473a17601a269640ba474696572a6766965776572a56c696d69"
        "7464a6637572736f72a8633a34323a626f62"
    ),
    "raise_hand": "83a174aa72616973655f68616e64a17601a269640c",
    "lower_hand": "83a174aa6c6f7765725f68616e64a17601a269640d",
    "set_video_quality": (
        "87a174b17365745f766964656f5f7175616c697479a17601a2696412a9747261636b5f736964a654525f63"
        "616da77175616c697479a36c6f77a57769647468cd0140a6686569676874ccb4"
    ),
    "set_track_layers": (
        "85a174b07365745f747261636b5f6c6179657273a17601a2696413a9747261636b5f736964a654525f63616d"
        "a66c61796572739284a3726964a171a57769647468cca0a66865696768745aab6d61785f62697472617465ce"
        "000249f084a3726964a166a57769647468cd0280a6686569676874cd0168ab6d61785f62697472617465ce00"
        "19f0a0"
    ),
    "fwd.publisher_layers": (
        "86a174b46677642e7075626c69736865725f6c6179657273a17601a7726f6f6d5f6964a172a3736964a45041"
        "5f31a9747261636b5f736964a654525f63616da66c61796572739184a3726964a168a57769647468cd0140a6"
        "686569676874ccb4ab6d61785f62697472617465ce0007a120"
    ),
    "layers_wanted": (
        "84a174ad6c61796572735f77616e746564a17601a9747261636b5f736964a654525f63616da47269647392"
        "a171a166"
    ),
    "video_layer": (
        "84a174ab766964656f5f6c61796572a17601a9747261636b5f736964a654525f63616da3726964a168"
    ),
    "fwd.subscriber_layers": (
        "86a174b56677642e737562736372696265725f6c6179657273a17601a7726f6f6d5f6964a172a3736964a4"
        "50415f32a9747261636b5f736964a654525f63616da77175616c697479a468696768"
    ),
    "offer": (
        "86a174a56f66666572a17601a269640ea6746172676574a97075626c6973686572a3736470a5763d300d0aab"
        "6963655f72657374617274c3"
    ),
    "answer": (
        "85a174a6616e73776572a17601a269640fa6746172676574aa73756273637269626572a3736470a5763d300d0a"
    ),
    "candidate": (
        "87a174a963616e646964617465a17601a2696410a6746172676574a97075626c6973686572a963616e646964"
        "617465d92863616e6469646174653a312031207564702031203132372e302e302e3120392074797020686f73"
        "74a77364705f6d6964a130af7364705f6d6c696e655f696e64657800"
    ),
    "ping": "84a174a470696e67a17601a2696411a26174cf0000018bcfe569c8",
    "ack": "84a174a361636ba17601a2696403a3736964a954525f73637265656e",
    "error": (
        "85a174a56572726f72a17601a2696409a4636f6465ad4e4f545f5055424c4953484544a76d657373616765b2"
        "616c69636520686173206e6f20766964656f"
    ),
    "joined": (
        "8ba174a66a6f696e6564a17601a2696401a373657129a4726f6f6d88a26964af776562696e61722d32303236"
        "2d3035a3736964a4524d5f31a86d65746164617461a9746f776e2068616c6cb06d61785f7061727469636970"
        "616e7473ce000186a0b16465706172747572655f74696d656f75741eaa6c69766573747265616dc3aa637265"
        "617465645f6174cf0000018bcfe56800a6636f756e747383a7737065616b657202a6766965776572cd2710a5"
        "746f74616ccd2712ab7061727469636970616e7483a3736964a450415f32a26964a3626f62a969735f766965"
        "776572c3a56772616e7483ab63616e5f7075626c697368c2b063616e5f7075626c6973685f64617461c2ac63"
        "616e5f6d6f646572617465c3a8737065616b6572739188a3736964a450415f31a26964a5616c696365a46e61"
        "6d65a45a6fc3aba46b696e64a56167656e74a86d65746164617461af7b22726f6c65223a22686f7374227daa"
        "6174747269627574657382a468616e64a6726169736564a46c616e67a26672a6747261636b739285a3736964"
        "a654525f63616da46b696e64a5766964656fa6736f75726365a663616d657261a46e616d65a343616da56d75"
        "746564c382a3736964a654525f6d6963a46b696e64a5617564696fa96a6f696e65645f6174cf0000018bcfe5"
        "687ba6636f756e747383a7737065616b657202a6766965776572cd2710a5746f74616ccd2712ac726573756d"
        "655f746f6b656eae65794a2e726573756d652e736967a565706f636803"
    ),
    "participant_joined": (
        "84a174b27061727469636970616e745f6a6f696e6564a17601a37365712aab7061727469636970616e7488a3"
        "736964a450415f31a26964a5616c696365a46e616d65a45a6fc3aba46b696e64a56167656e74a86d65746164"
        "617461af7b22726f6c65223a22686f7374227daa6174747269627574657382a468616e64a6726169736564a4"
        "6c616e67a26672a6747261636b739285a3736964a654525f63616da46b696e64a5766964656fa6736f757263"
        "65a663616d657261a46e616d65a343616da56d75746564c382a3736964a654525f6d6963a46b696e64a56175"
        "64696fa96a6f696e65645f6174cf0000018bcfe5687b"
    ),
    "participant_left": (
        "86a174b07061727469636970616e745f6c656674a17601a37365712ba3736964a450415f31ae706172746963"
        "6970616e745f6964a5616c696365a6726561736f6eab434c49454e545f4c454654"
    ),
    "participant_updated": (
        "84a174b37061727469636970616e745f75706461746564a17601a37365712cab7061727469636970616e7488"
        "a3736964a450415f31a26964a5616c696365a46e616d65a45a6fc3aba46b696e64a56167656e74a86d657461"
        "64617461af7b22726f6c65223a22686f7374227daa6174747269627574657382a468616e64a6726169736564"
        "a46c616e67a26672a6747261636b739285a3736964a654525f63616da46b696e64a5766964656fa6736f7572"
        "6365a663616d657261a46e616d65a343616da56d75746564c382a3736964a654525f6d6963a46b696e64a561"
        "7564696fa96a6f696e65645f6174cf0000018bcfe5687b"
    ),
    "track_published": (
        "85a174af747261636b5f7075626c6973686564a17601a37365712dae7061727469636970616e745f6964a561"
        "6c696365a5747261636b85a3736964a654525f63616da46b696e64a5766964656fa6736f75726365a663616d"
        "657261a46e616d65a343616da56d75746564c3"
    ),
    "track_unpublished": (
        "86a174b1747261636b5f756e7075626c6973686564a17601a37365712eae7061727469636970616e745f6964"
        "a5616c696365a9747261636b5f736964a654525f63616da46b696e64a5766964656f"
    ),
    "track_muted": (
        "86a174ab747261636b5f6d75746564a17601a37365712fae7061727469636970616e745f6964a5616c696365"
        "a9747261636b5f736964a654525f6d6963a56d75746564c2"
    ),
    "counts": (
        "84a174a6636f756e7473a17601a373657130a6636f756e747383a7737065616b657202a6766965776572cd27"
        "10a5746f74616ccd2712"
    ),
    "active_speakers": (
        "83a174af6163746976655f737065616b657273a17601a8737065616b6572739282ae7061727469636970616e"
        "745f6964a5616c696365a56c6576656ccb3fe000000000000082ae7061727469636970616e745f6964a3626f"
        "62a56c6576656ccb3fc0000000000000"
    ),
    "room_updated": (
        "84a174ac726f6f6d5f75706461746564a17601a373657131a4726f6f6d82a26964a172a3736964a4524d5f32"
    ),
    "hand": (
        "85a174a468616e64a17601a373657132ab7061727469636970616e7483a3736964a450415f32a26964a3626f"
        "62a969735f766965776572c3a6726169736564c3"
    ),
    "audience_changed": (
        "84a174b061756469656e63655f6368616e676564a17601a373657133a6636f756e747383a7737065616b6572"
        "02a6766965776572cd2710a5746f74616ccd2712"
    ),
    "viewer_updated": (
        "84a174ae7669657765725f75706461746564a17601a373657133ab7061727469636970616e7483a3736964a4"
        "50415f32a26964a3626f62a969735f766965776572c3"
    ),
    "data": (
        "87a174a464617461a17601a77061796c6f6164c40568656c6c6fa973656e6465725f6964a5616c696365aa73"
        "656e6465725f736964a450415f31a5746f706963a463686174af64657374696e6174696f6e5f69647392a362"
        "6f62a56361726f6c"
    ),
    "tier_changed": (
        "86a174ac746965725f6368616e676564a17601a373657134ab7061727469636970616e7483a3736964a45041"
        "5f32a26964a3626f62a969735f766965776572c3a56772616e7481ab63616e5f7075626c697368c2ac726573"
        "756d655f746f6b656ea172"
    ),
    "participants_page": (
        "86a174b17061727469636970616e74735f70616765a17601a269640bac7061727469636970616e74739288a3"
        "736964a450415f31a26964a5616c696365a46e616d65a45a6fc3aba46b696e64a56167656e74a86d65746164"
        "617461af7b22726f6c65223a22686f7374227daa6174747269627574657382a468616e64a6726169736564a4"
        "6c616e67a26672a6747261636b739285a3736964a654525f63616da46b696e64a5766964656fa6736f757263"
        "65a663616d657261a46e616d65a343616da56d75746564c382a3736964a654525f6d6963a46b696e64a56175"
        "64696fa96a6f696e65645f6174cf0000018bcfe5687b83a3736964a450415f32a26964a3626f62a969735f76"
        "6965776572c3ab6e6578745f637572736f72a8633a34323a626f62a5746f74616ccd2712"
    ),
    "disconnect": (
        "85a174aa646973636f6e6e656374a17601a6726561736f6eb24455504c49434154455f4944454e54495459a7"
        "6d657373616765b06a6f696e656420656c73657768657265ad63616e5f7265636f6e6e656374c3"
    ),
    "media_moved": "82a174ab6d656469615f6d6f766564a17601",
    "pong": (
        "85a174a4706f6e67a17601a2696411a26174cf0000018bcfe569c8a97365727665725f6174cf0000018bcfe5"
        "69cb"
    ),
    "api.create_room": (
        "86a174af6170692e6372656174655f726f6f6da17601a7726f6f6d5f6964af776562696e61722d323032362d"
        "3035b06d61785f7061727469636970616e7473cd01f4a86d65746164617461a16daa6c69766573747265616d"
        "c3"
    ),
    "api.list_rooms": "83a174ae6170692e6c6973745f726f6f6d73a17601a8726f6f6d5f69647392a161a162",
    "api.delete_room": (
        "83a174af6170692e64656c6574655f726f6f6da17601a7726f6f6d5f6964af776562696e61722d323032362d"
        "3035"
    ),
    "api.list_participants": (
        "85a174b56170692e6c6973745f7061727469636970616e7473a17601a7726f6f6d5f6964af776562696e6172"
        "2d323032362d3035a474696572a7737065616b6572a56c696d69740a"
    ),
    "api.get_participant": (
        "84a174b36170692e6765745f7061727469636970616e74a17601a7726f6f6d5f6964af776562696e61722d32"
        "3032362d3035ae7061727469636970616e745f6964a5616c696365"
    ),
    "api.update_participant": (
        "87a174b66170692e7570646174655f7061727469636970616e74a17601a7726f6f6d5f6964af776562696e61"
        "722d323032362d3035ae7061727469636970616e745f6964a3626f62a969735f766965776572c2a56772616e"
        "7483ab63616e5f7075626c697368c2b063616e5f7075626c6973685f64617461c2ac63616e5f6d6f64657261"
        "7465c3aa6174747269627574657381a468616e64a0"
    ),
    "api.remove_participant": (
        "84a174b66170692e72656d6f76655f7061727469636970616e74a17601a7726f6f6d5f6964af776562696e61"
        "722d323032362d3035ae7061727469636970616e745f6964a3626f62"
    ),
    "api.mute_track": (
        "85a174ae6170692e6d7574655f747261636ba17601a7726f6f6d5f6964af776562696e61722d323032362d30"
        "35ae7061727469636970616e745f6964a5616c696365a9747261636b5f736964a654525f6d6963"
    ),
    "api.update_room_metadata": (
        "84a174b86170692e7570646174655f726f6f6d5f6d65746164617461a17601a7726f6f6d5f6964af77656269"
        "6e61722d323032362d3035a86d65746164617461a0"
    ),
    "api.send_data": (
        "86a174ad6170692e73656e645f64617461a17601a7726f6f6d5f6964af776562696e61722d323032362d3035"
        "a77061796c6f6164c40100a5746f706963a174a872656c6961626c65c2"
    ),
    "api.room": (
        "83a174a86170692e726f6f6da17601a4726f6f6d88a26964af776562696e61722d323032362d3035a3736964"
        "a4524d5f31a86d65746164617461a9746f776e2068616c6cb06d61785f7061727469636970616e7473ce0001"
        "86a0b16465706172747572655f74696d656f75741eaa6c69766573747265616dc3aa637265617465645f6174"
        "cf0000018bcfe56800a6636f756e747383a7737065616b657202a6766965776572cd2710a5746f74616ccd27"
        "12"
    ),
    "api.rooms": (
        "83a174a96170692e726f6f6d73a17601a5726f6f6d739288a26964af776562696e61722d323032362d3035a3"
        "736964a4524d5f31a86d65746164617461a9746f776e2068616c6cb06d61785f7061727469636970616e7473"
        "ce000186a0b16465706172747572655f74696d656f75741eaa6c69766573747265616dc3aa63726561746564"
        "5f6174cf0000018bcfe56800a6636f756e747383a7737065616b657202a6766965776572cd2710a5746f7461"
        "6ccd271282a26964a172a3736964a4524d5f32"
    ),
    "api.participant": (
        "83a174af6170692e7061727469636970616e74a17601ab7061727469636970616e7488a3736964a450415f31"
        "a26964a5616c696365a46e616d65a45a6fc3aba46b696e64a56167656e74a86d65746164617461af7b22726f"
        "6c65223a22686f7374227daa6174747269627574657382a468616e64a6726169736564a46c616e67a26672a6"
        "747261636b739285a3736964a654525f63616da46b696e64a5766964656fa6736f75726365a663616d657261"
        "a46e616d65a343616da56d75746564c382a3736964a654525f6d6963a46b696e64a5617564696fa96a6f696e"
        "65645f6174cf0000018bcfe5687b"
    ),
    "api.ok": "82a174a66170692e6f6ba17601",
    "internal.edge_heartbeat": (
        "85a174b7696e7465726e616c2e656467655f686561727462656174a17601a7656467655f6964a6656467652d"
        "31a26174cf0000018bcfe569c8a7736f636b657473cd3039"
    ),
    "internal.edge_gone": (
        "84a174b2696e7465726e616c2e656467655f676f6e65a17601a7656467655f6964a6656467652d31a26174cf"
        "0000018bcfe569c8"
    ),
    "internal.health": "82a174af696e7465726e616c2e6865616c7468a17601",
    "internal.health_reply": (
        "86a174b5696e7465726e616c2e6865616c74685f7265706c79a17601a773657276696365ab73746174656b65"
        "65706572a26f6bc3ab6170706c6965645f736571cf0000010000000000a5726f6f6d7307"
    ),
    "event.room_started": (
        "85a174b26576656e742e726f6f6d5f73746172746564a17601a26964a445565f31a26174cf0000018bcfe569"
        "c8a4726f6f6d88a26964af776562696e61722d323032362d3035a3736964a4524d5f31a86d65746164617461"
        "a9746f776e2068616c6cb06d61785f7061727469636970616e7473ce000186a0b16465706172747572655f74"
        "696d656f75741eaa6c69766573747265616dc3aa637265617465645f6174cf0000018bcfe56800a6636f756e"
        "747383a7737065616b657202a6766965776572cd2710a5746f74616ccd2712"
    ),
    "event.room_finished": (
        "86a174b36576656e742e726f6f6d5f66696e6973686564a17601a26964a445565f32a26174cf0000018bcfe5"
        "69c8a4726f6f6d82a26964a172a3736964a4524d5f32a6726561736f6eac524f4f4d5f44454c45544544"
    ),
    "event.participant_joined": (
        "87a174b86576656e742e7061727469636970616e745f6a6f696e6564a17601a26964a445565f33a26174cf00"
        "00018bcfe569c8a7726f6f6d5f6964af776562696e61722d323032362d3035a8726f6f6d5f736964a4524d5f"
        "31ab7061727469636970616e7488a3736964a450415f31a26964a5616c696365a46e616d65a45a6fc3aba46b"
        "696e64a56167656e74a86d65746164617461af7b22726f6c65223a22686f7374227daa617474726962757465"
        "7382a468616e64a6726169736564a46c616e67a26672a6747261636b739285a3736964a654525f63616da46b"
        "696e64a5766964656fa6736f75726365a663616d657261a46e616d65a343616da56d75746564c382a3736964"
        "a654525f6d6963a46b696e64a5617564696fa96a6f696e65645f6174cf0000018bcfe5687b"
    ),
    "event.participant_left": (
        "88a174b66576656e742e7061727469636970616e745f6c656674a17601a26964a445565f34a26174cf000001"
        "8bcfe569c8a7726f6f6d5f6964af776562696e61722d323032362d3035a8726f6f6d5f736964a4524d5f31ab"
        "7061727469636970616e7483a3736964a450415f32a26964a3626f62a969735f766965776572c3a672656173"
        "6f6ea752454d4f564544"
    ),
    "event.track_published": (
        "88a174b56576656e742e747261636b5f7075626c6973686564a17601a26964a445565f35a26174cf0000018b"
        "cfe569c8a7726f6f6d5f6964af776562696e61722d323032362d3035a8726f6f6d5f736964a4524d5f31ab70"
        "61727469636970616e7488a3736964a450415f31a26964a5616c696365a46e616d65a45a6fc3aba46b696e64"
        "a56167656e74a86d65746164617461af7b22726f6c65223a22686f7374227daa6174747269627574657382a4"
        "68616e64a6726169736564a46c616e67a26672a6747261636b739285a3736964a654525f63616da46b696e64"
        "a5766964656fa6736f75726365a663616d657261a46e616d65a343616da56d75746564c382a3736964a65452"
        "5f6d6963a46b696e64a5617564696fa96a6f696e65645f6174cf0000018bcfe5687ba5747261636b85a37369"
        "64a654525f63616da46b696e64a5766964656fa6736f75726365a663616d657261a46e616d65a343616da56d"
        "75746564c3"
    ),
    "event.track_unpublished": (
        "88a174b76576656e742e747261636b5f756e7075626c6973686564a17601a26964a445565f36a26174cf0000"
        "018bcfe569c8a7726f6f6d5f6964af776562696e61722d323032362d3035a8726f6f6d5f736964a4524d5f31"
        "ab7061727469636970616e7488a3736964a450415f31a26964a5616c696365a46e616d65a45a6fc3aba46b69"
        "6e64a56167656e74a86d65746164617461af7b22726f6c65223a22686f7374227daa61747472696275746573"
        "82a468616e64a6726169736564a46c616e67a26672a6747261636b739285a3736964a654525f63616da46b69"
        "6e64a5766964656fa6736f75726365a663616d657261a46e616d65a343616da56d75746564c382a3736964a6"
        "54525f6d6963a46b696e64a5617564696fa96a6f696e65645f6174cf0000018bcfe5687ba5747261636b82a3"
        "736964a654525f6d6963a46b696e64a5617564696f"
    ),
    "log.join": (
        "de0011a174a86c6f672e6a6f696ea17601a7726f6f6d5f6964af776562696e61722d323032362d3035a26174"
        "cf0000018bcfe569c8a3736964a450415f32ae7061727469636970616e745f6964a3626f62a46e616d65a342"
        "6f62a969735f766965776572c3a46b696e64a3736970a56772616e7483ab63616e5f7075626c697368c2b063"
        "616e5f7075626c6973685f64617461c2ac63616e5f6d6f646572617465c3a86d65746164617461a16daa6174"
        "747269627574657381a161a162a7656467655f6964a6656467652d31a8746f6b656e5f6964a56a74692d31b0"
        "746f6b656e5f657870697265735f6174ce6553ff10a87265706c795f746fa9736573732e50415f32a3726571"
        "01"
    ),
    "log.resume": (
        "8aa174aa6c6f672e726573756d65a17601a7726f6f6d5f6964a172a26174cf0000018bcfe569c8a3736964a4"
        "50415f32a7656467655f6964a6656467652d32a87265706c795f746fa9736573732e50415f32a372657102a5"
        "65706f636803a8726f6f6d5f736964a4524d5f37"
    ),
    "log.leave": (
        "85a174a96c6f672e6c65617665a17601a7726f6f6d5f6964a172a26174cf0000018bcfe569c8a3736964a450"
        "415f32"
    ),
    "log.disconnect": (
        "86a174ae6c6f672e646973636f6e6e656374a17601a7726f6f6d5f6964a172a26174cf0000018bcfe569c8a3"
        "736964a450415f32a7656467655f6964a6656467652d31"
    ),
    "log.publish_track": (
        "87a174b16c6f672e7075626c6973685f747261636ba17601a7726f6f6d5f6964a172a26174cf0000018bcfe5"
        "69c8a3736964a450415f31a5747261636b85a3736964a654525f63616da46b696e64a5766964656fa6736f75"
        "726365a663616d657261a46e616d65a343616da56d75746564c3a372657103"
    ),
    "log.unpublish_track": (
        "86a174b36c6f672e756e7075626c6973685f747261636ba17601a7726f6f6d5f6964a172a26174cf0000018b"
        "cfe569c8a3736964a450415f31a9747261636b5f736964a654525f63616d"
    ),
    "log.mute_track": (
        "87a174ae6c6f672e6d7574655f747261636ba17601a7726f6f6d5f6964a172a26174cf0000018bcfe569c8a3"
        "736964a450415f31a9747261636b5f736964a654525f6d6963a56d75746564c3"
    ),
    "log.set_metadata": (
        "86a174b06c6f672e7365745f6d65746164617461a17601a7726f6f6d5f6964a172a26174cf0000018bcfe569"
        "c8a3736964a450415f31a86d65746164617461a462757379"
    ),
    "log.set_attributes": (
        "86a174b26c6f672e7365745f61747472696275746573a17601a7726f6f6d5f6964a172a26174cf0000018bcf"
        "e569c8a3736964a450415f31aa6174747269627574657381a468616e64a6726169736564"
    ),
    "log.subscription": (
        "88a174b06c6f672e737562736372697074696f6ea17601a7726f6f6d5f6964a172a26174cf0000018bcfe569"
        "c8a3736964a450415f32ae7061727469636970616e745f6964a5616c696365a46b696e64a5766964656faa73"
        "756273637269626564c3"
    ),
    "log.create_room": (
        "89a174af6c6f672e6372656174655f726f6f6da17601a7726f6f6d5f6964a172a26174cf0000018bcfe569c8"
        "a8726f6f6d5f736964a4524d5f32b06d61785f7061727469636970616e74730aad656d7074795f74696d656f"
        "75743ca87265706c795f746fa85f494e424f582e78a372657104"
    ),
    "log.delete_room": (
        "84a174af6c6f672e64656c6574655f726f6f6da17601a7726f6f6d5f6964a172a26174cf0000018bcfe569c8"
    ),
    "log.update_room_metadata": (
        "85a174b86c6f672e7570646174655f726f6f6d5f6d65746164617461a17601a7726f6f6d5f6964a172a26174"
        "cf0000018bcfe569c8a86d65746164617461a36e6577"
    ),
    "log.update_participant": (
        "88a174b66c6f672e7570646174655f7061727469636970616e74a17601a7726f6f6d5f6964a172a26174cf00"
        "00018bcfe569c8ae7061727469636970616e745f6964a3626f62a969735f766965776572c2a56772616e7480"
        "a46e616d65a6426f6220422e"
    ),
    "log.remove_participant": (
        "85a174b66c6f672e72656d6f76655f7061727469636970616e74a17601a7726f6f6d5f6964a172a26174cf00"
        "00018bcfe569c8ae7061727469636970616e745f6964a3626f62"
    ),
    "log.admin_mute": (
        "87a174ae6c6f672e61646d696e5f6d757465a17601a7726f6f6d5f6964a172a26174cf0000018bcfe569c8ae"
        "7061727469636970616e745f6964a5616c696365a9747261636b5f736964a654525f6d6963a56d75746564c3"
    ),
    "log.grace_expired": (
        "86a174b16c6f672e67726163655f65787069726564a17601a7726f6f6d5f6964a172a26174cf0000018bcfe5"
        "69c8a3736964a450415f32af646973636f6e6e65637465645f6174cf0000018bcfe51ba8"
    ),
    "log.room_timeout": (
        "86a174b06c6f672e726f6f6d5f74696d656f7574a17601a7726f6f6d5f6964a172a26174cf0000018bcfe569"
        "c8a8726f6f6d5f736964a4524d5f32ab656d7074795f73696e6365cf0000018bcfe0d5e8"
    ),
    "log.edge_lost": (
        "85a174ad6c6f672e656467655f6c6f7374a17601a7726f6f6d5f6964a172a26174cf0000018bcfe569c8a765"
        "6467655f6964a6656467652d31"
    ),
    "log.sessions_alive": (
        "86a174b26c6f672e73657373696f6e735f616c697665a17601a7726f6f6d5f6964a172a26174cf0000018bcf"
        "e569c8a7656467655f6964a6656467652d31a47369647392a450415f31a450415f32"
    ),
    "log.forwarder_assigned": (
        "86a174b66c6f672e666f727761726465725f61737369676e6564a17601a7726f6f6d5f6964a172a26174cf00"
        "00018bcfe569c8a3736964a450415f32ac666f727761726465725f6964a446575f31"
    ),
    "restart_ice": (
        "84a174ab726573746172745f696365a17601a2696415a9747261636b5f736964a654525f63616d"
    ),
    "internal.media_assign": (
        "85a174b5696e7465726e616c2e6d656469615f61737369676ea17601a7726f6f6d5f6964a172a3736964a450"
        "415f32a9747261636b5f736964a654525f63616d"
    ),
    "internal.action_outcome": (
        "85a174b7696e7465726e616c2e616374696f6e5f6f7574636f6d65a17601a7726f6f6d5f6964a172a37365"
        "712aa87265706c795f746fbd7374616765636173742e736573732e656467652d312e50415f322e6331"
    ),
    "internal.action_outcome_reply": (
        "84a174bd696e7465726e616c2e616374696f6e5f6f7574636f6d655f7265706c79a17601a6666f6c646564"
        "c3a56672616d65c40e83a174a361636ba17601a2696407"
    ),
    "internal.media_assignment": (
        "84a174b9696e7465726e616c2e6d656469615f61737369676e6d656e74a17601ac666f727761726465725f69"
        "64a446575f31a46b696e64a5766964656f"
    ),
    "fwd.session": (
        "89a174ab6677642e73657373696f6ea17601a7726f6f6d5f6964a172a3736964a450415f32a86964656e7469"
        "7479a3626f62a77375626a656374ba7374616765636173742e736573732e656467652d312e50415f32a37365"
        "712aa6747261636b739183a9747261636b5f736964a654525f6d6963a46b696e64a5617564696fa56d757465"
        "64c3ad737562736372697074696f6e739185a9747261636b5f736964a654525f63616da46b696e64a5766964"
        "656fac7075626c69736865725f6964a5616c696365ad7075626c69736865725f736964a450415f31ac666f72"
        "7761726465725f6964a446575f32"
    ),
    "fwd.ingress": (
        "87a174ab6677642e696e6772657373a17601a7726f6f6d5f6964a172a3736964a450415f31a77375626a"
        "656374b87374616765636173742e736573732e45445f312e50415f31a6747261636b739183a36d6964a1"
        "30a9747261636b5f736964a654525f63616da46b696e64a5766964656fa3736470a5763d300d0a"
    ),
    "fwd.ingress_ended": (
        "85a174b16677642e696e67726573735f656e646564a17601a7726f6f6d5f6964a172a3736964a450415f"
        "31a6726561736f6eb574686520636f6e6e656374696f6e206661696c6564"
    ),
    "fwd.publish": (
        "87a174ab6677642e7075626c697368a17601a7726f6f6d5f6964a172a3736964a450415f31a9747261636b5f"
        "736964a654525f63616da46b696e64a5766964656fa3736470a5763d300d0a"
    ),
    "fwd.subscriber_answer": (
        "86a174b56677642e737562736372696265725f616e73776572a17601a7726f6f6d5f6964a172a3736964a450"
        "415f32a9747261636b5f736964a654525f63616da3736470a5763d300d0a"
    ),
    "fwd.candidate": (
        "89a174ad6677642e63616e646964617465a17601a7726f6f6d5f6964a172a3736964a450415f32a974726163"
        "6b5f736964a654525f63616da6746172676574aa73756273637269626572a963616e646964617465d9356361"
        "6e6469646174653a312031205544502032313232323532353433203132372e302e302e312035303030302074"
        "797020686f7374a77364705f6d6964a130af7364705f6d6c696e655f696e64657800"
    ),
    "fwd.restart_subscription": (
        "85a174b86677642e726573746172745f737562736372697074696f6ea17601a7726f6f6d5f6964a172a37369"
        "64a450415f32a9747261636b5f736964a654525f63616d"
    ),
    "fwd.sdp": "83a174a76677642e736470a17601a3736470a5763d300d0a",
    "fwd.ok": "82a174a66677642e6f6ba17601",
    "fwd.relay_start": (
        "85a174af6677642e72656c61795f7374617274a17601a7726f6f6d5f6964a172a9747261636b5f736964a654"
        "525f63616dac746f5f666f72776172646572a446575f32"
    ),
    "fwd.relay_accepted": (
        "83a174b26677642e72656c61795f6163636570746564a17601a5636f64656384a46b696e64a5766964656fa9"
        "6d696d655f74797065a9766964656f2f565038aa636c6f636b5f72617465ce00015f90aa706172616d657465"
        "727381a66d61782d6672a23330"
    ),
    "fwd.relay_stop": (
        "85a174ae6677642e72656c61795f73746f70a17601a7726f6f6d5f6964a172a9747261636b5f736964a65452"
        "5f63616dac746f5f666f72776172646572a446575f32"
    ),
    "fwd.keyframe": ("83a174ac6677642e6b65796672616d65a17601a9747261636b5f736964a654525f63616d"),
    "fwd.rtp": (
        "8ba174a76677642e727470a17601a9747261636b5f736964a654525f63616daf73657175656e63655f6e756d"
        "626572cdffffa974696d657374616d70ceffffffffa66d61726b657201a77061796c6f6164c40510009d012a"
        "a473737263ce075bcd15ac7061796c6f61645f7479706560ae766f6963655f6163746976697479c3ab617564"
        "696f5f6c6576656c1e"
    ),
    "fwd.speakers": (
        "85a174ac6677642e737065616b657273a17601a7726f6f6d5f6964af776562696e61722d323032362d3035ac"
        "666f727761726465725f6964a446575f31a8737065616b6572739182ae7061727469636970616e745f6964a5"
        "616c696365a56c6576656ccb3fd0000000000000"
    ),
    "fwd.heartbeat": (
        "88a174ad6677642e686561727462656174a17601ac666f727761726465725f6964a446575f31a26174cf0000"
        "018bcfe569c8b0706565725f636f6e6e656374696f6e7303b07075626c69736865645f747261636b7301a46c"
        "65677302ad7061636b6574735f7065725f73cd0384"
    ),
}
"""`encode(case).hex()` for every case above, by tag: the wire format, pinned."""
CASES += AGENT_CASES
GOLDEN_HEX.update(AGENT_GOLDEN_HEX)


def _tag(case: Message) -> str:
    return case.TYPE


@pytest.mark.parametrize("case", CASES, ids=_tag)
def test_golden_bytes(case: Message) -> None:
    data = encode(case)
    assert data.hex() == GOLDEN_HEX[case.TYPE]
    assert decode(data) == case
    assert type(decode(bytes.fromhex(GOLDEN_HEX[case.TYPE]))) is type(case)


def test_every_registered_message_has_a_golden_case() -> None:
    assert sorted(c.TYPE for c in CASES) == sorted(registered())
    assert sorted(GOLDEN_HEX) == sorted(registered())


def test_defaults_are_left_out_and_come_back_on_decode() -> None:
    assert to_wire(Ping(id=1)) == {"t": "ping", "v": 1, "id": 1}
    assert to_wire(ParticipantJoined(seq=1, participant=ParticipantInfo(sid="s", id="i"))) == {
        "t": "participant_joined",
        "v": 1,
        "seq": 1,
        "participant": {"sid": "s", "id": "i"},
    }
    # Required fields go on the wire even when they hold a "default-looking" value.
    assert to_wire(MuteTrack(id=0, track_sid="", muted=False)) == {
        "t": "mute_track",
        "v": 1,
        "id": 0,
        "track_sid": "",
        "muted": False,
    }
    decoded = decode(msgpack.packb({"t": "get_participants", "id": 5}))
    assert decoded == GetParticipants(id=5, tier=None, limit=50, cursor=None)


def test_unknown_fields_are_ignored_and_older_versions_read() -> None:
    frame = {"t": "leave", "v": 1, "id": 3, "added_later": [1, {"x": b"y"}]}
    assert decode(msgpack.packb(frame)) == Leave(id=3)
    assert decode(msgpack.packb({"t": "leave", "id": 3})) == Leave(id=3)  # "v" defaults to 1


def test_decoded_attribute_defaults_are_not_shared() -> None:
    first = decode_as(msgpack.packb({"t": "log.join", **_JOIN_FIELDS}), JoinRequested)
    second = decode_as(msgpack.packb({"t": "log.join", **_JOIN_FIELDS}), JoinRequested)
    assert first.attributes == {}
    assert first.attributes is not second.attributes


_JOIN_FIELDS: dict[str, Any] = {
    "room_id": "r",
    "at": 1,
    "sid": "PA_1",
    "participant_id": "alice",
    "edge_id": "edge-1",
}


# --------------------------------------------------------------------------- hostile input

HYPOTHESIS = settings(max_examples=300, deadline=None)
FRAMES = tuple(bytes.fromhex(h) for h in GOLDEN_HEX.values())


def _decode_safely(data: bytes) -> Message | None:
    """Decode; a `SchemaError` is fine, any other exception fails the test.

    Whatever decodes must re-encode and decode to the same message.
    """
    try:
        msg = decode(data)
    except SchemaError:
        return None
    assert isinstance(msg, Message)
    assert decode(encode(msg)) == msg
    return msg


@HYPOTHESIS
@given(st.binary(max_size=4096))
def test_random_bytes_raise_only_schema_errors(data: bytes) -> None:
    _decode_safely(data)


_Mutation = tuple[str, int, bytes]


def _mutate(frame: bytes, mutations: list[_Mutation]) -> bytes:
    out = bytearray(frame)
    for op, position, chunk in mutations:
        at = position % (len(out) + 1)
        if op == "flip" and at < len(out):
            out[at] ^= chunk[0] or 0xFF
        elif op == "insert":
            out[at:at] = chunk
        elif op == "delete":
            del out[at : at + len(chunk)]
    return bytes(out)


_MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete"]),
        st.integers(min_value=0, max_value=2**16),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=6,
)


@HYPOTHESIS
@given(st.sampled_from(FRAMES), _MUTATIONS)
def test_mutated_golden_frames_raise_only_schema_errors(
    frame: bytes, mutations: list[_Mutation]
) -> None:
    _decode_safely(_mutate(frame, mutations))


def _field_names_of(cls: type[Any]) -> list[str]:
    return [f.name for f in msgspec.structs.fields(cls)]


def _field_names() -> list[str]:
    names: set[str] = {"t", "v"}
    for cls in (*registered().values(), Grant, TrackInfo, ParticipantInfo, Counts, RoomInfo):
        names.update(_field_names_of(cls))
    return sorted(names)


FIELD_NAMES = _field_names()
_KEYS = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8))
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from(
        ["audio", "video", "camera", "speaker", "viewer", "publisher", "standard", "x" * 300]
    ),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(_KEYS, inner, max_size=6)),
    max_leaves=30,
)


@st.composite
def _frame_like(draw: st.DrawFn) -> Any:
    """A map with a real type tag and plausible (or wrong) values for that type's fields."""
    cls = draw(st.sampled_from(list(registered().values())))
    names = _field_names_of(cls)
    body: dict[str, Any] = {"t": cls.TYPE}
    if draw(st.booleans()):
        body["v"] = draw(st.one_of(st.integers(-2, 3), _SCALARS))
    if names:
        for name in draw(st.lists(st.sampled_from(names), unique=True)):
            body[name] = draw(_VALUES)
    return body


@HYPOTHESIS
@given(st.one_of(_VALUES, _frame_like()))
def test_random_msgpack_values_raise_only_schema_errors(value: Any) -> None:
    _decode_safely(msgpack.packb(value, use_bin_type=True))


def _sized(alphabet: list[Any], limit: int) -> st.SearchStrategy[Any]:
    """Values of `limit` units give or take two (the boundary), or short ones."""
    around = st.integers(min_value=max(limit - 2, 0), max_value=limit + 2)
    return st.one_of(
        st.builds(operator.mul, st.sampled_from(alphabet), around),
        st.builds(operator.mul, st.sampled_from(alphabet), st.integers(0, 4)),
    )


def _typed(tp: Any) -> st.SearchStrategy[Any]:
    """Values for a field annotation: mostly well-typed (limits included), now and then junk."""
    limits: list[Any] = []
    if get_origin(tp) is Annotated:
        tp, *limits = get_args(tp)
    size = next((lim.size for lim in limits if isinstance(lim, MaxBytes)), None)
    length = next((lim.max_length for lim in limits if isinstance(lim, msgspec.Meta)), None)
    chars = length if size is None else None
    items = length if length is not None else 3
    origin = get_origin(tp)
    valid: st.SearchStrategy[Any]
    if origin in (Union, UnionType):
        (option,) = (a for a in get_args(tp) if a is not type(None))
        valid = st.none() | _typed(Annotated[option, *limits] if limits else option)
    elif origin is Literal:
        valid = st.sampled_from(get_args(tp))
    elif tp is str:
        valid = st.text(max_size=12)
        if chars is not None or size is not None:
            valid |= _sized(["x", "é", "😀"], chars if chars is not None else size or 0)
    elif tp is bytes:
        valid = st.binary(max_size=12) | _sized([b"x"], size or 0)
    elif tp is bool:
        valid = st.booleans()
    elif tp is int:
        valid = st.integers(min_value=-(2**63), max_value=2**64 - 1)
    elif tp is float:  # bounds included, and just past them
        valid = st.floats(allow_nan=True) | st.sampled_from([0.0, 1.0, -0.01, 1.01])
    elif origin is tuple:
        at_limit = st.sampled_from([items, items + 1]).map(lambda n: ["x"] * n)
        valid = st.lists(_typed(get_args(tp)[0]), max_size=3) | at_limit
    elif origin is dict:
        valid = st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=4)
        if size is not None:
            valid |= _sized(["x", "é"], size).map(lambda v: {"k": v})
    elif isinstance(tp, type) and issubclass(tp, Struct):
        valid = _typed_body(tp)
    else:
        raise AssertionError(f"no strategy for {tp!r}: teach _typed the new wire type")
    return st.integers(0, 9).flatmap(lambda roll: _VALUES if roll == 0 else valid)


def _typed_body(cls: type[Any]) -> st.SearchStrategy[dict[str, Any]]:
    hints = get_type_hints(cls, include_extras=True)
    fields = msgspec.structs.fields(cls)
    required = {f.name: _typed(hints[f.name]) for f in fields if f.required}
    optional = {f.name: _typed(hints[f.name]) for f in fields if f.name not in required}
    return st.fixed_dictionaries(required, optional=optional)


def _tagged(tag: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"t": tag, **body}


TYPED_FRAMES = st.one_of(
    *(
        _typed_body(cls).map(functools.partial(_tagged, tag))
        for tag, cls in sorted(registered().items())
    )
)
"""Frames of every registered type with values drawn from each field's own type."""


@HYPOTHESIS
@given(TYPED_FRAMES)
def test_typed_random_frames_raise_only_schema_errors(frame: dict[str, Any]) -> None:
    _decode_safely(msgpack.packb(frame, use_bin_type=True))


@HYPOTHESIS
@given(st.sampled_from(CASES), st.data())
def test_golden_frames_with_one_field_replaced_raise_only_schema_errors(
    case: Message, data: st.DataObject
) -> None:
    body = to_wire(case)
    field = data.draw(st.sampled_from(sorted(body)))
    body[field] = data.draw(_VALUES)
    _decode_safely(msgpack.packb(body, use_bin_type=True))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used
        b"\x81\xa1t",  # truncated
        msgpack.packb({"t": "leave", "id": 1}) + b"\x00",  # trailing bytes
        msgpack.packb([1, 2]),
        msgpack.packb("leave"),
        msgpack.packb({"id": 1}),
        msgpack.packb({"t": 7, "id": 1}),
        msgpack.packb({b"t": b"leave", b"id": 1}, use_bin_type=True),  # binary keys
        b"\x81\x01\x02",  # an integer map key
        b"\x91" * 100_000 + b"\xc0",  # nesting deeper than the unpacker's stack
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion items
        b"\xd4\xff\x00",  # a malformed timestamp extension
    ],
)
def test_malformed_frames(data: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode(data)


def test_extension_values_are_invalid_fields() -> None:
    frame = msgpack.packb({"t": "leave", "id": msgpack.ExtType(5, b"x")})
    with pytest.raises(InvalidField, match="id"):
        decode(frame)
    ts = msgpack.packb({"t": "ping", "id": 1, "at": msgpack.Timestamp(1)}, datetime=False)
    with pytest.raises(InvalidField, match="at"):
        decode(ts)


def test_deep_nesting_in_a_field_is_an_invalid_field() -> None:
    deep = b"\x83\xa1t\xa4join\xa5token\xa1x\xa2id" + b"\x91" * 1000 + b"\x01"
    with pytest.raises(InvalidField, match="id"):
        decode(deep)


# --------------------------------------------------------------------------- limits


E = TypeVar("E", bound=SchemaError)


def _raises_exactly(error: type[E], frame: dict[str, Any]) -> E:
    with pytest.raises(SchemaError) as info:
        decode(msgpack.packb(frame, use_bin_type=True))
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    return info.value


def _participant(**fields: Any) -> dict[str, Any]:
    return {"sid": "PA_1", "id": "alice", **fields}


ID_FRAMES: list[Callable[[str], dict[str, Any]]] = [
    lambda s: {"t": "subscribe", "id": 1, "participant_id": s, "kind": "audio"},
    lambda s: {"t": "join", "id": 1, "token": "t", "name": s},
    lambda s: {"t": "join", "id": 1, "token": "t", "room_id": s},
    lambda s: {"t": "api.create_room", "room_id": s},
    lambda s: {"t": "participant_joined", "seq": 1, "participant": _participant(id=s)},
    lambda s: {"t": "participant_joined", "seq": 1, "participant": _participant(name=s)},
    lambda s: {"t": "publish_data", "id": 1, "payload": b"", "destination_ids": ["a", s]},
]


@pytest.mark.parametrize("frame", ID_FRAMES)
def test_identities_and_names_are_limited_to_256_characters(
    frame: Callable[[str], dict[str, Any]],
) -> None:
    assert decode(msgpack.packb(frame("é" * 256), use_bin_type=True))
    _raises_exactly(FieldTooLong, frame("x" * 257))


METADATA_FRAMES: list[Callable[[str], dict[str, Any]]] = [
    lambda m: {"t": "set_metadata", "id": 1, "metadata": m},
    lambda m: {"t": "api.update_room_metadata", "room_id": "r", "metadata": m},
    lambda m: {"t": "participant_updated", "seq": 1, "participant": _participant(metadata=m)},
]


@pytest.mark.parametrize("frame", METADATA_FRAMES)
def test_metadata_is_limited_to_64_kib(frame: Callable[[str], dict[str, Any]]) -> None:
    assert decode(msgpack.packb(frame("x" * 65_536)))
    _raises_exactly(PayloadTooLarge, frame("x" * 65_537))
    # The limit counts UTF-8 bytes, not characters.
    _raises_exactly(PayloadTooLarge, frame("é" * 32_769))


def _attributes(value: dict[str, str]) -> dict[str, Any]:
    return {"t": "set_attributes", "id": 1, "attributes": value}


def test_attributes_are_limited_to_64_kib_in_total() -> None:
    assert decode(msgpack.packb(_attributes({"k": "v" * 65_535})))
    _raises_exactly(PayloadTooLarge, _attributes({"k": "v" * 65_536}))
    many = {f"key{i:04}": "v" * 60 for i in range(1000)}  # 67 bytes each: 67,000 in all
    _raises_exactly(PayloadTooLarge, _attributes(many))
    # UTF-8 bytes, not characters: 16,384 four-byte characters fill the limit exactly.
    assert decode(msgpack.packb(_attributes({"": "😀" * 16_384})))
    _raises_exactly(PayloadTooLarge, _attributes({"k": "😀" * 16_384}))
    _raises_exactly(
        PayloadTooLarge,
        {"t": "participant_updated", "seq": 1, "participant": _participant(attributes=many)},
    )


def test_attributes_are_limited_to_1024_entries() -> None:
    assert decode(msgpack.packb(_attributes({str(i): "" for i in range(1024)})))
    _raises_exactly(InvalidField, _attributes({str(i): "" for i in range(1025)}))


@pytest.mark.parametrize(
    ("tag", "limit"), [("publish_data", 18_432), ("data", 18_432), ("api.send_data", 15_360)]
)
def test_data_payloads_are_limited_to_15_kib_plus_the_reserved_topics_envelope_room(
    tag: str, limit: int
) -> None:
    """The client frames admit a reserved topic's 18 KiB (the edge holds other topics to
    15 KiB, `schemas.streams.data_limit`); the server API's data stays at 15 KiB."""
    frame = {"t": tag, "id": 1, "room_id": "r", "payload": b"x" * limit}
    assert decode(msgpack.packb(frame, use_bin_type=True))
    _raises_exactly(PayloadTooLarge, {**frame, "payload": b"x" * (limit + 1)})


def test_frames_over_1_mib_are_refused_by_encode() -> None:
    room = RoomInfo(id="r" * 200, sid="RM", metadata="m" * 1000)
    big = RoomListReply(rooms=(room,) * 900)  # every field within its own limit
    with pytest.raises(FrameTooLarge):
        encode(big)
    assert len(encode(RoomListReply(rooms=(room,) * 800))) < MAX_FRAME_BYTES


def _padded_frame(size: int) -> bytes:
    """A valid `leave` frame of exactly `size` bytes (padded with an unknown field)."""
    pad = size
    while True:
        data: bytes = msgpack.packb(
            {"t": "leave", "id": 1, "pad": b"\x00" * pad}, use_bin_type=True
        )
        if len(data) == size:
            return data
        pad -= len(data) - size


def test_frames_over_1_mib_are_refused_by_decode() -> None:
    assert decode(_padded_frame(MAX_FRAME_BYTES)) == Leave(id=1)
    with pytest.raises(FrameTooLarge):
        decode(_padded_frame(MAX_FRAME_BYTES + 1))
    with pytest.raises(FrameTooLarge):
        decode(b"\x00" * (MAX_FRAME_BYTES + 1))  # before any parsing


WRONG_TYPES: list[dict[str, Any]] = [
    {"t": "leave", "id": "1"},
    {"t": "leave", "id": 1.0},
    {"t": "leave", "id": None},
    {"t": "leave", "id": True},  # a bool is not an int
    {"t": "get_participants", "id": 1, "limit": False},
    {"t": "ping", "id": 1, "at": True},
    {"t": "counts", "seq": 1, "counts": {"speaker": True}},
    {"t": "join", "id": 1, "token": 5},
    {"t": "join", "id": 1, "token": b"tok"},  # binary is not a string
    {"t": "join", "id": 1, "token": "t", "auto_subscribe": 1},  # an int is not a bool
    {"t": "join", "id": 1, "token": "t", "room_id": ["r"]},
    {"t": "publish_data", "id": 1, "payload": "text"},  # a string is not binary
    {"t": "publish_data", "id": 1, "payload": b"", "destination_ids": "bob"},
    {"t": "publish_data", "id": 1, "payload": b"", "destination_ids": [1]},
    {"t": "set_attributes", "id": 1, "attributes": [["k", "v"]]},
    {"t": "set_attributes", "id": 1, "attributes": {"k": 1}},
    {"t": "set_attributes", "id": 1, "attributes": {"k": None}},
    {"t": "subscribe", "id": 1, "participant_id": "a", "kind": "smell"},
    {"t": "subscribe", "id": 1, "participant_id": "a", "kind": b"audio"},
    {"t": "get_participants", "id": 1, "tier": "audience"},
    {"t": "participant_joined", "seq": 1, "participant": ["PA_1", "alice"]},
    {"t": "participant_joined", "seq": 1, "participant": _participant(tracks={"sid": "x"})},
    {"t": "participant_joined", "seq": 1, "participant": _participant(tracks=[["x"]])},
    {"t": "tier_changed", "seq": 1, "participant": _participant(), "grant": {"can_hls": 1}},
    {"t": "leave", "v": "1", "id": 1},
    {"t": "leave", "v": True, "id": 1},
    {"t": "leave", "v": 0, "id": 1},
]


@pytest.mark.parametrize("frame", WRONG_TYPES)
def test_wrong_field_types_are_invalid_fields(frame: dict[str, Any]) -> None:
    _raises_exactly(InvalidField, frame)


@pytest.mark.parametrize(
    ("frame", "missing"),
    [
        ({"t": "leave"}, "id"),
        ({"t": "join", "id": 1}, "token"),
        ({"t": "error", "id": 1}, "code"),
        ({"t": "participant_joined", "seq": 1, "participant": {"sid": "PA_1"}}, "participant.id"),
        ({"t": "track_published", "seq": 1, "participant_id": "a", "track": {"sid": "T"}}, "kind"),
    ],
)
def test_missing_required_fields_are_invalid_fields(frame: dict[str, Any], missing: str) -> None:
    error = _raises_exactly(InvalidField, frame)
    assert missing in str(error)


def test_unknown_type_tag() -> None:
    _raises_exactly(UnknownType, {"t": "no_such_message", "id": 1})
    _raises_exactly(UnknownType, {"t": "", "id": 1})
    with pytest.raises(UnknownType):
        decode_as(encode(Leave(id=1)), Join)


def test_newer_version_is_unsupported() -> None:
    assert Join.VERSION == 1
    _raises_exactly(UnsupportedVersion, {"t": "join", "v": 2, "id": 1, "token": "t"})
    # Even a frame that would otherwise be invalid: the version is checked first.
    _raises_exactly(UnsupportedVersion, {"t": "join", "v": 99})


# --------------------------------------------------------------------------- characters


def _string_spots(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where a wire map holds strings: ``(*path, key)`` for values, ``(*path, ("key", k))``
    for attribute keys (the type tag and version excepted)."""
    spots: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if path == () and key in ("t", "v"):
                continue
            if isinstance(item, str):
                spots.append((*path, key))
            else:
                spots.extend(_string_spots(item, (*path, key)))
            if path and path[-1] == "attributes":  # a dict[str, str]: its keys count too
                spots.append((*path, ("key", key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                spots.append((*path, i))
            else:
                spots.extend(_string_spots(item, (*path, i)))
    return spots


def _poisoned(wire: Any, spot: tuple[Any, ...], char: str) -> Any:
    """A deep copy of `wire` with `char` put in the middle of the string at `spot`."""
    copy = msgpack.unpackb(msgpack.packb(wire, use_bin_type=True), raw=False)
    *parents, last = spot
    holder = copy
    for key in parents:
        holder = holder[key]
    if isinstance(last, tuple):
        key = last[1]
        holder[key[:1] + char + key[1:]] = holder.pop(key)
    else:
        text = holder[last]
        holder[last] = text[:1] + char + text[1:]
    return copy


_NUL_SPOTS = [
    pytest.param(case, spot, id=f"{case.TYPE}:{spot}")
    for case in CASES
    for spot in _string_spots(to_wire(case))
]


@pytest.mark.parametrize(("case", "spot"), _NUL_SPOTS)
def test_nul_in_any_wire_string_is_refused_with_forbidden_character(
    case: Message, spot: tuple[Any, ...]
) -> None:
    # One NUL in a room id once stalled all PostgreSQL persistence: no string of any client
    # frame, log event, API message or statekeeper RPC may carry one past decode.
    with pytest.raises(InvalidField) as info:
        decode(msgpack.packb(_poisoned(to_wire(case), spot, "\x00"), use_bin_type=True))
    error = info.value
    assert error.code == "BAD_REQUEST"
    if not isinstance(error, ForbiddenCharacter):  # a closed set refuses any other string
        assert "must be one of" in str(error), str(error)
        return
    assert error.char == "\x00"
    assert "U+0000" in str(error)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.TYPE)
def test_decode_trusted_reads_what_decode_reads(case: Message) -> None:
    assert decode_trusted(encode(case)) == decode(encode(case)) == case


def test_decode_trusted_checks_types_and_versions_but_not_string_contents() -> None:
    """For bytes our own services encoded (the statekeeper's replies to an edge): msgspec's
    checks stay, the Python pass over the strings (NUL, control characters) is skipped."""
    with pytest.raises(MalformedFrame):
        decode_trusted(b"\xc1")
    with pytest.raises(UnknownType):
        decode_trusted(msgpack.packb({"t": "no-such-type"}))
    with pytest.raises(UnsupportedVersion):
        decode_trusted(msgpack.packb({"t": "ping", "v": 99, "id": 1, "at": 1}))
    poisoned = msgpack.packb({"t": "ping", "id": 1, "at": 1, "note": "ok"})
    assert decode_trusted(poisoned) == decode(poisoned)
    nul = encode(Error(id=1, code="INTERNAL", message="a\x00b"))
    with pytest.raises(ForbiddenCharacter):
        decode(nul)
    assert decode_trusted(nul) == Error(id=1, code="INTERNAL", message="a\x00b")


def test_every_message_has_a_string_the_nul_test_reaches() -> None:
    reached = {cast(Message, p.values[0]).TYPE for p in _NUL_SPOTS}
    no_strings = {
        c.TYPE for c in CASES if not _string_spots(to_wire(c))
    }  # messages made of numbers, bytes and flags only
    assert reached | no_strings == set(registered())
    assert "log.join" in reached and "join" in reached and "api.create_room" in reached


ID_FIELD_FRAMES: list[Callable[[str], dict[str, Any]]] = [
    lambda s: {"t": "join", "id": 1, "token": "t", "room_id": s},
    lambda s: {"t": "api.create_room", "room_id": s},
    lambda s: {"t": "api.list_participants", "room_id": s},
    lambda s: {"t": "subscribe", "id": 1, "participant_id": s, "kind": "audio"},
    lambda s: {"t": "mute_track", "id": 1, "track_sid": s, "muted": True},
    lambda s: {"t": "publish_data", "id": 1, "payload": b"", "topic": s},
    lambda s: {"t": "publish_data", "id": 1, "payload": b"", "destination_ids": ["a", s]},
    lambda s: {"t": "log.leave", "room_id": s, "at": 1, "sid": "PA_1"},
    lambda s: {"t": "log.leave", "room_id": "r", "at": 1, "sid": s},
    lambda s: {"t": "participant_joined", "seq": 1, "participant": _participant(id=s)},
]


@pytest.mark.parametrize("char", ["\x00", "\x01", "\t", "\n", "\x1f", "\x7f", "\x85", "\x9f"])
@pytest.mark.parametrize("frame", ID_FIELD_FRAMES)
def test_control_characters_in_ids_are_refused(
    frame: Callable[[str], dict[str, Any]], char: str
) -> None:
    assert decode(msgpack.packb(frame("ok-id é 😀"), use_bin_type=True))
    error = _raises_exactly(ForbiddenCharacter, frame(f"a{char}b"))
    assert error.char == char


FREE_TEXT_FRAMES: list[Callable[[str], dict[str, Any]]] = [
    lambda s: {"t": "join", "id": 1, "token": "t", "name": s},
    lambda s: {"t": "set_metadata", "id": 1, "metadata": s},
    lambda s: {"t": "set_attributes", "id": 1, "attributes": {"k": s}},
    lambda s: {"t": "set_attributes", "id": 1, "attributes": {s: "v"}},
    lambda s: {"t": "api.update_room_metadata", "room_id": "r", "metadata": s},
    lambda s: {"t": "participant_joined", "seq": 1, "participant": _participant(name=s)},
]


@pytest.mark.parametrize("frame", FREE_TEXT_FRAMES)
def test_free_text_keeps_control_characters_but_refuses_nul(
    frame: Callable[[str], dict[str, Any]],
) -> None:
    assert decode(msgpack.packb(frame("line one\nline\ttwo\x85"), use_bin_type=True))
    error = _raises_exactly(ForbiddenCharacter, frame("before\x00after"))
    assert isinstance(error, InvalidField)
    assert error.field  # the path names the field, e.g. "attributes['k']"


def test_forbidden_character_names_the_nested_field() -> None:
    frame = {"t": "participant_joined", "seq": 1, "participant": _participant(id="x\x00y")}
    error = _raises_exactly(ForbiddenCharacter, frame)
    assert error.field == "participant.id"
    assert str(error) == "participant.id: contains the forbidden character U+0000"


def test_every_limit_error_is_a_schema_error_with_a_wire_code() -> None:
    assert issubclass(FieldTooLong, InvalidField)
    assert issubclass(FrameTooLarge, PayloadTooLarge)
    assert PayloadTooLarge.code == "PAYLOAD_TOO_LARGE"
    assert UnknownType.code == "UNKNOWN_TYPE"
    assert InvalidField.code == "BAD_REQUEST"
