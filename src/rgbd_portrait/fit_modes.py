"""How an input image becomes the model's square, by name, without heavy imports (the CLI offers them as
choices; a checkpoint's settings name its default; `rgbd_portrait.pipelines.inputs` plans them):

    crop  the largest square inside the image, centred on the face when MediaPipe finds one
    pad   the smallest square holding the image
    face  the face framed as `prepare` frames its training crops (FFHQ proportions), padded past the borders;
          the rest of the image is left out (falls back to crop when no face is found)
"""

FIT_MODES = ("crop", "pad", "face")
