"""Is a tar shard whole? A walk over its headers, without reading the files in it.

Streaming readers (webdataset included) stop quietly at the first short read: a shard cut off by an
interrupted copy loses its tail without a word, and a file that is not a tar at all fails deep
inside the reader. ``shard_problem`` answers first, in the time it takes to read one 512-byte
header per member: every member's data must lie inside the file, and the archive must end with the
two zero blocks every tar writer puts after its last member.
"""

from __future__ import annotations

import tarfile
import zlib

BLOCK = tarfile.BLOCKSIZE  # 512
END_OF_ARCHIVE = 2 * BLOCK


def shard_problem(path: str) -> str | None:
    """None when the tar file ``path`` (plain or compressed) is complete, else what is wrong with it."""
    end, count = 0, 0
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:  # reads each header and seeks past the data; a cut header ends it quietly
                end, count = member.offset_data + -(-member.size // BLOCK) * BLOCK, count + 1
            tar.fileobj.seek(end)
            tail = tar.fileobj.read(END_OF_ARCHIVE)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        if isinstance(exc, tarfile.ReadError) and count and "unexpected end of data" in str(exc):
            # a member's data runs past the end of the file
            return f"ends early: cut off inside member {count} (an interrupted copy or write?)"
        # tarfile.open("r:*") lists one failure per compression it tried; the plain-tar one says most
        reason = str(exc).strip().splitlines()[-1].removeprefix("- method tar: ") or type(exc).__name__
        return f"not a readable tar archive ({reason})"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if len(tail) < END_OF_ARCHIVE or any(tail):
        return (
            f"ends early: no end-of-archive marker after its {count} whole member(s), at byte {end:,} (an "
            "interrupted copy or write?)"
        )
    return None
