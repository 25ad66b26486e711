// Whether this browser can receive a subscribed track in the codec the forwarder offers
// (the Python SDK's stagecast/client/receivable.py, in camelCase).
//
// The forwarder offers each subscribed track in the one codec its publisher sends, beside
// companions (rtx, RED, FEC) that carry nothing on their own. A browser that cannot decode
// it (Debian's Firefox ESR has no H.264) would answer with the media line rejected, get
// nothing and say nothing. Checked against RTCRtpReceiver.getCapabilities before answering
// (and the answer checked for a rejected media line), the mismatch becomes a named
// `track-subscription-failed` (reason CODEC_UNSUPPORTED) at once.

export const CODEC_UNSUPPORTED = 'CODEC_UNSUPPORTED';
const COMPANIONS = new Set(['rtx', 'red', 'ulpfec', 'flexfec-03', 'cn', 'telephone-event']);

/** The media codecs an SDP's m-lines carry as MIME types ('video/VP9'), once each, in order. */
export function offeredCodecs(sdp) {
  let kind = '';
  const found = [];
  for (const line of sdp.split(/\r?\n/)) {
    if (line.startsWith('m=')) kind = line.slice(2).split(' ')[0];
    else if (line.startsWith('a=rtpmap:') && kind && line.includes(' ')) {
      const name = line.slice(line.indexOf(' ') + 1).split('/')[0].trim();
      const mime = `${kind}/${name}`;
      if (name && !COMPANIONS.has(name.toLowerCase()) && !found.includes(mime)) found.push(mime);
    }
  }
  return found;
}

/** `offered` when none of it is in `receivable` (MIME types, any case); else []. A null
 *  `receivable` (the browser cannot tell) never fails. */
export function unreceivable(offered, receivable) {
  if (!receivable || !offered.length) return [];
  const can = new Set(receivable.map((mime) => mime.toLowerCase()));
  return offered.some((mime) => can.has(mime.toLowerCase())) ? [] : [...offered];
}

/** Whether an answer rejected a media line (port 0): its browser cannot receive it. */
export function rejectsMedia(sdp) {
  return /^m=\w+ 0 /m.test(sdp);
}

/** The MIME types this browser can receive for `kind`, or null when it cannot tell. */
export function receivableCodecs(kind) {
  if (!kind || typeof RTCRtpReceiver === 'undefined' || !RTCRtpReceiver.getCapabilities) return null;
  return RTCRtpReceiver.getCapabilities(kind)?.codecs?.map((c) => c.mimeType) ?? null;
}
