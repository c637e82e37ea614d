# The twistd plugin: `twistd mailframe`.  Kept tiny and lazy (like
# twisted_mail's), so that scanning plugins does not import mailframe.
from twisted.application.service import ServiceMaker

mailframe = ServiceMaker(
    "mailframe", "mailframe.app.tap", "A pluggable SMTP/ESMTP mail server", "mailframe"
)
