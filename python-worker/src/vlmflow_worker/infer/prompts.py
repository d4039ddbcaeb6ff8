"""Task presets → chat conversations (typed content parts), rendered later by the processor's chat template.

A conversation is a list of {"role", "content": [{"type": "image"} | {"type": "text", "text": ...}]}, the layout
SmolVLM's chat template (and TRL's datasets) use. `<image>` markers in chat text stand for the item's images in order.
"""

from __future__ import annotations

from vlmflow.v1 import generate_pb2
from vlmflow_worker.errors import InvalidArgument

IMAGE_MARKER = "<image>"
ROLES = ("system", "user", "assistant")

CAPTION_PROMPT = "Describe this image."
OCR_PROMPT = "What is written in this image?"
VIDEO_PROMPT = "Describe this video."

TASK_NAMES = {
    generate_pb2.TASK_CAPTION: "caption",
    generate_pb2.TASK_VQA: "vqa",
    generate_pb2.TASK_OCR: "ocr",
    generate_pb2.TASK_MULTI_IMAGE: "multi-image",
    generate_pb2.TASK_VIDEO: "video",
    generate_pb2.TASK_CHAT: "chat",
}
TASKS_BY_NAME = {name: task for task, name in TASK_NAMES.items()}


def infer_task(item: generate_pb2.GenerateItem) -> int:
    """TASK_UNSPECIFIED: chat when messages are given, else video, multi-image, VQA or caption by the inputs."""
    if item.messages:
        return generate_pb2.TASK_CHAT
    if item.HasField("video") and item.video.uri:
        return generate_pb2.TASK_VIDEO
    if len(item.images) > 1:
        return generate_pb2.TASK_MULTI_IMAGE
    if len(item.images) == 1:
        return generate_pb2.TASK_VQA if item.prompt.strip() else generate_pb2.TASK_CAPTION
    return generate_pb2.TASK_CHAT


def _user(num_images: int, text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": text}]}]


def _format_time(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


def video_parts(timestamps: list[float], duration: float) -> list[dict]:
    """A video's content parts: frames in temporal order, each introduced by its time (as SmolVLM2's video prompts
    do). Prep puts these where a row's `<video>` marker was, so training sees a video as Generate shows it."""
    content: list[dict] = [
        {"type": "text", "text": f"You are provided the following series of {len(timestamps)} frames "}
    ]
    content[0]["text"] += f"from a {_format_time(duration)} [mm:ss] video.\n" if duration else "from a video.\n"
    for t in timestamps:
        content.append({"type": "text", "text": f"\nFrame from {_format_time(t)}:"})
        content.append({"type": "image"})
    return content


def video_conversation(prompt: str, timestamps: list[float], duration: float) -> list[dict]:
    """The video task's conversation: the frames (video_parts), then the prompt."""
    content = video_parts(timestamps, duration)
    content.append({"type": "text", "text": f"\n\n{prompt}"})
    return [{"role": "user", "content": content}]


def native_video_conversation(prompt: str) -> list[dict]:
    """The video task's conversation for a family whose processor takes videos: one video part, which the processor
    expands into the frames with their times in the family's own words, then the prompt."""
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]


def chat_conversation(messages, num_images: int, what: str) -> list[dict]:
    """ChatMessages with `<image>` markers → typed content. Marker and image counts must match; with no marker at
    all, the images go before the first user turn's text."""
    markers = sum(m.text.count(IMAGE_MARKER) for m in messages)
    if markers and markers != num_images:
        raise InvalidArgument(
            f"{what}.messages has {markers} {IMAGE_MARKER} markers but the item has {num_images} images; "
            "give one image per marker"
        )
    if not any(m.text.strip() for m in messages):
        raise InvalidArgument(f"{what}.messages: every message is empty; give at least one user message")
    conversation: list[dict] = []
    placed = bool(markers)
    for i, message in enumerate(messages):
        if message.role not in ROLES:
            raise InvalidArgument(f"{what}.messages[{i}].role {message.role!r} is not one of {', '.join(ROLES)}")
        content: list[dict] = []
        if not placed and message.role == "user":
            content += [{"type": "image"}] * num_images
            placed = True
        for j, part in enumerate(message.text.split(IMAGE_MARKER)):
            if j:
                content.append({"type": "image"})
            if part:
                content.append({"type": "text", "text": part})
        if not content:
            raise InvalidArgument(f"{what}.messages[{i}].text is empty")
        conversation.append({"role": message.role, "content": content})
    if not placed and num_images:
        raise InvalidArgument(f"{what}.messages has images but no user message to put them in")
    if conversation[-1]["role"] == "assistant":
        raise InvalidArgument(f"{what}.messages ends with an assistant turn; the last message must be the user's")
    return conversation


def build_conversation(item: generate_pb2.GenerateItem, task: int, what: str, num_images: int) -> list[dict]:
    """The conversation for an item's task (images already counted; video frames are added by the caller)."""
    prompt = item.prompt.strip()
    if task != generate_pb2.TASK_CHAT and IMAGE_MARKER in prompt:
        raise InvalidArgument(
            f"{what}.prompt contains {IMAGE_MARKER} markers; presets place the images themselves "
            "(use TASK_CHAT with messages to place them by hand)"
        )
    name = TASK_NAMES.get(task, str(task))
    if task in (generate_pb2.TASK_CAPTION, generate_pb2.TASK_OCR, generate_pb2.TASK_VQA):
        if num_images != 1:
            raise InvalidArgument(f"{what}: the {name} task needs exactly one image, got {num_images}")
        if task == generate_pb2.TASK_VQA and not prompt:
            raise InvalidArgument(f"{what}.prompt is empty; the vqa task needs a question")
        default = CAPTION_PROMPT if task == generate_pb2.TASK_CAPTION else OCR_PROMPT
        return _user(1, prompt or default)
    if task == generate_pb2.TASK_MULTI_IMAGE:
        if num_images < 2:
            raise InvalidArgument(f"{what}: the multi-image task needs at least two images, got {num_images}")
        if not prompt:
            raise InvalidArgument(f"{what}.prompt is empty; the multi-image task needs a question")
        return _user(num_images, prompt)
    if task == generate_pb2.TASK_CHAT:
        if item.messages:
            return chat_conversation(item.messages, num_images, what)
        if not prompt:
            raise InvalidArgument(f"{what}: the prompt and the messages are both empty")
        return _user(num_images, prompt)
    raise InvalidArgument(f"{what}.task {task} is not a known task")
