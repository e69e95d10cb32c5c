"""The web chat page: a streamlit app (``baichuan web`` or ``streamlit run``) over the one chat/decode path.

:mod:`baichuan13b.web.page` holds the page's logic (importable without streamlit); :data:`APP_PATH` is the
streamlit script, :mod:`baichuan13b.web.app`.
"""

from .page import APP_PATH, Conversation, InputTooLongError, Message, ModelFacts, Settings

__all__ = ["APP_PATH", "Conversation", "InputTooLongError", "Message", "ModelFacts", "Settings"]
